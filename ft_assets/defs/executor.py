"""The executor of every run: a run of one step executes it in the run's own process; a run of several
starts a process per step, forked from a server that has already loaded the code location.

Dagster's default starts every step in a fresh Python process that imports Dagster and loads the code
location again: about 5 s a step on a 2-core machine (bench/RESULTS.md, "Dagster's own cost"), which is
most of what Dagster adds to a single-asset run and a fifth of a small whole-graph run. A lone step
gains nothing from a process of its own (the run ends with it), and training runs in its own process
anyway (Dagster Pipes). Several steps keep their isolation: a report's evaluation must not leave its
memory in the process that runs the next step.

The run config takes the multiprocess executor's settings: `execution: {config: {max_concurrent: 2}}`,
or `start_method: {spawn: {}}` for a fresh process per step.
"""

from __future__ import annotations

import dagster as dg


class OneStepInProcessExecutor(dg.Executor):
    def __init__(self, in_process: dg.Executor, multiprocess: dg.Executor):
        self._in_process, self._multiprocess = in_process, multiprocess

    @property
    def retries(self):
        return self._multiprocess.retries

    @property
    def step_dependency_config(self):
        return self._multiprocess.step_dependency_config

    def execute(self, plan_context, execution_plan):
        one_step = len(execution_plan.step_keys_to_execute) == 1
        yield from (self._in_process if one_step else self._multiprocess).execute(plan_context, execution_plan)


def _code_location_module(job) -> str:
    """The module the run loaded its code location from (a reconstructable job knows it), else Dagster's."""
    get_module = getattr(job, "get_module", None)
    return (get_module() if get_module else None) or "dagster"


def _created(definition: dg.ExecutorDefinition, init_context: dg.InitExecutorContext, config: dict) -> dg.Executor:
    return definition.executor_creation_fn(init_context._replace(executor_def=definition, executor_config=config))


@dg.executor(
    name="one_step_in_process",
    config_schema=dg.multiprocess_executor.config_schema,
    requirements=dg.multiple_process_executor_requirements(),
)
def one_step_in_process_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    config = dict(init_context.executor_config)
    # Forked from a server that has imported the code location's module (Dagster's forkserver, left to
    # itself, preloads only its own executor module): a step starts in about 1 s instead of 5.
    config.setdefault("start_method", {"forkserver": {"preload_modules": [_code_location_module(init_context.job)]}})
    in_process_config = {k: config[k] for k in ("retries", "step_dependency_config") if k in config}
    return OneStepInProcessExecutor(
        in_process=_created(dg.in_process_executor, init_context, in_process_config),
        multiprocess=_created(dg.multiprocess_executor, init_context, config),
    )
