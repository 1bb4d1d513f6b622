"""Fine-tunes one recipe into a checkpoint directory: the training step's process.

    python -m ft_assets.lib.training SPEC.json
    python -m ft_assets.lib.training --processes N SPEC.json    # torchrun --standalone, N processes (DDP)

SPEC.json: a TrainingSpec (spec.py). The checkpoint is written to a staging directory and renamed into place only
when complete, so a crash never leaves a half checkpoint behind. Launched by Dagster Pipes, every
logged metric also goes to the Dagster run log and the run ends with a materialization carrying the
cost figures. Under torchrun every process trains (DDP); only rank 0 talks to Dagster and saves.
This module alone touches Dagster Pipes, signals and torchrun.
"""

from __future__ import annotations

import json
import os
import sys

from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.training.loop import MetricLogger
from ft_assets.lib.training.run import run
from ft_assets.lib.training.spec import TrainingSpec, training_error_path

# Dagster Pipes metadata types of the values the materialization reports.
PIPES_TYPES = {int: "int", float: "float", str: "text", bool: "bool"}


def main(argv: list[str] | None = None) -> None:
    import argparse

    import fsspec
    from dagster_pipes import PipesEnvVarParamsLoader

    parser = argparse.ArgumentParser(prog="python -m ft_assets.lib.training", description="Trains from SPEC.json.")
    parser.add_argument("--processes", type=int, default=1,
                        help="above 1: this process becomes torchrun --standalone over that many processes (DDP)")
    parser.add_argument("spec", help="SPEC.json, a local path or s3:// URI")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # Started by a Dagster step, or a torchrun worker; run by hand (under nohup, say) it may outlive its shell.
    if PipesEnvVarParamsLoader().is_dagster_pipes_process() or "LOCAL_RANK" in os.environ:
        _stop_with_parent()
    try:
        spec = TrainingSpec.read(args.spec)  # s3:// when the run is in a pod
        if args.processes > 1:
            from ft_assets.lib.training.distributed import require_a_gpu_each

            require_a_gpu_each(args.processes, spec.device)
            # torchrun takes this process over: the same pid, so Dagster's SIGINT on termination reaches
            # it, and the parent-death signal set above stays with it.
            os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      f"--nproc-per-node={args.processes}", "-m", "ft_assets.lib.training", args.spec])
        _train_from_spec(spec)
    except Exception as e:
        # The orchestrator sees only an exit code: leave it the reason, beside the spec.
        from ft_assets.lib.training.distributed import current_world

        world = current_world()
        where = f" (process {world.rank} of {world.size})" if world.size > 1 else ""
        with fsspec.open(training_error_path(args.spec), "w") as f:
            f.write(f"{type(e).__name__}{where}: {e}")
        raise


def _stop_with_parent() -> None:
    """On Linux, SIGTERM this process when the process that started it dies.

    A Dagster step (or torchrun) killed with SIGKILL, by the OOM killer say, would otherwise leave
    its training processes running for a run that is over, holding the device; their resume states
    stay for the rerun. (The signal follows the parent's thread: Dagster's Pipes client waits for
    the process in the thread that started it, as torchrun does for its workers.)
    """
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def _train_from_spec(spec: TrainingSpec) -> None:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    from ft_assets.lib.training.distributed import current_world

    if not current_world().is_main:  # only rank 0 talks to Dagster: one log, one materialization
        run(spec, MetricLogger())
        return
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        manifest = run(spec, MetricLogger(sink=lambda r: print(json.dumps(r), flush=True)))
        print(json.dumps({"checkpoint": spec.output_dir, "train_info": manifest["train_info"]}))
        return

    with open_dagster_pipes() as pipes:
        manifest = run(spec, MetricLogger(sink=lambda r: pipes.log.info(
            "step " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        )))
        info = manifest["train_info"]
        figures = {**TrainingCost.from_train_info(info).model_dump(exclude_none=True),
                   "final_train_loss": info["final_train_loss"], "processes": info["processes"],
                   "precision": info["precision"], "resumed_from_step": info["resumed_from_step"] or 0,
                   "published_step": info["published_step"], "steps_run": info["steps_run"],
                   "stopped_early": info["stopped_early"],
                   **({"best_step": info["best_step"], "best_metric": info["best_metric"]}
                      if info["best_step"] is not None else {})}
        pipes.report_asset_materialization(metadata={
            "checkpoint_path": {"raw_value": spec.output_dir, "type": "path"},
            **{name: {"raw_value": value, "type": PIPES_TYPES[type(value)]} for name, value in figures.items()},
        })


if __name__ == "__main__":
    main()
