"""Declarative automation: what rebuilds by itself after a landing sensor ingests new content.

raw/<corpus>        the landing sensors (defs/ingest/sensors.py), never on a condition
datasets/<dataset>  eager: after any raw corpus it reads is updated, once its raw checks passed
checkpoints/<r>     retraining, gated (see `retraining`); never for `retrain: manual`
learning_rate_search/<r>
                    the same retraining, per candidate rate, for a recipe that searches its learning rate;
                    its checkpoints/<r> then eager: it follows once no candidate is missing or running
reports, leaderboards, champions
                    eager: follow a new checkpoint or report
"""

import dagster as dg

from ft_assets.lib.config import ProjectConfig, RetrainConfig

AUTOMATION_SENSOR = "ft_assets_automation"


def rebuild_after_upstream() -> dg.AutomationCondition:
    """Eager, and only over upstream data whose blocking checks passed."""
    return (dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        "eager, upstream checks passed")


class RequestedWithin(dg.AutomationCondition):
    """True while this asset's last request by automation is less than `seconds` old.

    Dagster's operands know whether an asset was requested on the previous tick, not how long ago; this
    condition remembers the time of the last request in its cursor. Python of our own: the automation
    sensor runs in the code server (use_user_code_server).
    """

    def __init__(self, seconds: int):
        self.seconds = seconds

    @property
    def name(self) -> str:
        return f"requested_within_{self.seconds}s"

    @property
    def description(self) -> str:
        return f"requested by automation less than {self.seconds} s ago"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        last = float(context.cursor) if context.cursor else None
        previous = context.get_previous_requested_subset(context.key)
        if previous is not None and not previous.is_empty and context.previous_evaluation_time is not None:
            last = context.previous_evaluation_time.timestamp()  # the previous tick requested it
        recent = last is not None and context.evaluation_time.timestamp() - last < self.seconds
        return dg.AutomationResult(context, context.candidate_subset if recent else context.get_empty_subset(),
                                   cursor=None if last is None else repr(last))


def retraining(retrain: RetrainConfig) -> dg.AutomationCondition:
    """Train when the checkpoint was never trained or an upstream's content changed since it was last
    requested or built, the upstream's blocking checks passed and no run of it is in progress; and,
    with `min_interval`, no request came within the interval (so a recipe never trained, or not for a
    while, trains at once), or with `cron`, a tick has passed since the last request. After downtime:
    one run, never a burst."""
    upstream_changed = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
    never_trained = dg.AutomationCondition.missing().newly_true()
    wanted = (upstream_changed | never_trained).since(
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    ).with_label("never trained, or an upstream's content changed since the last training")
    if retrain.cron is not None:
        allowed = dg.AutomationCondition.cron_tick_passed(retrain.cron).since(
            dg.AutomationCondition.newly_requested()
        ).with_label(f"a `{retrain.cron}` tick passed since the last request")
        every = f"`{retrain.cron}` tick"
    else:
        allowed = (~RequestedWithin(retrain.min_interval_seconds)).with_label(
            f"no training request in the last {retrain.min_interval}")
        every = retrain.min_interval
    return (
        allowed
        & wanted
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"retrain at most once per {every}")


def default_sensor_status(config: ProjectConfig) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if config.automation.enabled else dg.DefaultSensorStatus.STOPPED


def automation_sensor(config: ProjectConfig) -> dg.AutomationConditionSensorDefinition:
    # Dagster's default automation sensor starts stopped; this one runs from the first start.
    project = (dg.AssetSelection.key_prefixes([config.name_prefix]) if config.name_prefix
               else dg.AssetSelection.all())
    return dg.AutomationConditionSensorDefinition(
        config.qualified_name(AUTOMATION_SENSOR), target=project, default_status=default_sensor_status(config),
        minimum_interval_seconds=config.automation.evaluation_interval_seconds,
        use_user_code_server=True,  # RequestedWithin is Python of our own
        description="Evaluates every asset's automation condition: datasets after new raw content, gated "
                    "retraining, then reports, leaderboards and champions.",
    )
