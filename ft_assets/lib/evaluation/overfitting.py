"""What the validation evaluations of a run say about overfitting, from its train_info and metrics.jsonl.

The report's `training` block: the step whose weights were published (training.keep), its train and
validation loss and their gap, and whether the validation loss rose by more than `max_rise` (a share of
its lowest value) after that lowest point while the train loss kept falling: the run overfitted after it.
With keep best the published weights are from before that rise; with keep last they are not.
"""

from __future__ import annotations

import math

# The asset check on reports/<recipe> that reads this block. It warns only: not a gate, never blocks, never
# keeps a recipe from champion.
OVERFITTING_CHECK = "overfitting"


def training_block(info: dict, records: list[dict], max_rise: float | None) -> dict | None:
    """The block, or None for a run without validation evaluations (or a checkpoint from before them)."""
    evals = [r for r in records if "eval_loss" in r and math.isfinite(r["eval_loss"])]
    trains = [r for r in records if "train_loss" in r and math.isfinite(r["train_loss"])]
    if not evals or "published_step" not in info:
        return None
    published = info["published_step"]
    at_published = next((e["eval_loss"] for e in evals if e["step"] == published), None)
    train_loss = info.get("train_loss_at_published_step")
    lowest = min(evals, key=lambda e: e["eval_loss"])
    last = evals[-1]
    rise = (last["eval_loss"] - lowest["eval_loss"]) / lowest["eval_loss"] if lowest["eval_loss"] > 0 else 0.0
    train_then = next((r["train_loss"] for r in reversed(trains) if r["step"] <= lowest["step"]), None)
    train_falling = train_then is not None and bool(trains) and trains[-1]["train_loss"] < train_then
    return {
        "keep": info.get("keep"), "published_step": published, "steps_run": info.get("steps_run"),
        "steps_planned": info.get("steps_planned"), "stopped_early": info.get("stopped_early", False),
        "selection_metric": info.get("selection_metric"), "best_metric": info.get("best_metric"),
        "train_loss": train_loss, "validation_loss": at_published,
        "gap": at_published - train_loss if at_published is not None and train_loss is not None else None,
        "lowest_validation_loss": lowest["eval_loss"], "lowest_validation_loss_step": lowest["step"],
        "last_validation_loss": last["eval_loss"], "validation_loss_rise": rise,
        "max_validation_rise": max_rise,
        "overfitting": max_rise is not None and rise > max_rise and train_falling,
    }


def overfitting_summary(block: dict) -> str:
    """One sentence for the check and the report."""
    rise = (f"the validation loss rose {block['validation_loss_rise']:.0%} from its lowest "
            f"({block['lowest_validation_loss']:.4f} at step {block['lowest_validation_loss_step']}) to "
            f"{block['last_validation_loss']:.4f} at the last evaluation")
    if block["overfitting"]:
        kept = (f"the published weights are step {block['published_step']}'s (training.keep best)"
                if block["keep"] == "best" else "the published weights are the last step's: set training.keep best")
        return (f"overfitting: {rise} while the train loss kept falling (more than the "
                f"{block['max_validation_rise']:.0%} allowed); {kept}")
    return f"no overfitting beyond {block['max_validation_rise']:.0%}: {rise}"
