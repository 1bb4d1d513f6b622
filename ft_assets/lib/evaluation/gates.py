"""The gates a report must pass before its checkpoint may be promoted, computed from eval.json alone.

Two gates, each one sentence with its numbers so a failure explains itself in the UI:

- beats_baselines: the headline test metric beats the best baseline (the untuned base, and for
  classifiers also the majority class) by at least `gates.min_margin`.
- forgetting_ceiling (only with `gates.max_forgetting`): the forgetting figure, representation
  drift for encoders or the loss increase for causal LMs on the texts the base knows (a general
  corpus, or the base checkpoint's held-out split), is at most the ceiling.
"""

from __future__ import annotations

from ft_assets.lib.config import LOWER_IS_BETTER, TASK_METRICS, GatesConfig
from ft_assets.lib.evaluation.forgetting import forgetting_source
from ft_assets.lib.evaluation.leaderboard import forgetting_figure

def evaluate_gates(report: dict, gates: GatesConfig) -> list[dict]:
    """[{name, passed, blocking, summary, values}] for each gate the recipe has."""
    results = [_beats_baselines(report, gates.min_margin)]
    if gates.max_forgetting is not None:
        results.append(_forgetting_ceiling(report, gates.max_forgetting))
    return [{**r, "blocking": gates.blocking} for r in results]


def _beats_baselines(report: dict, margin: float) -> dict:
    metric = TASK_METRICS[report["task"]][0]
    tuned = report[metric]
    baselines = {name: b[metric] for name, b in report["baselines"].items()}
    if not baselines:
        return {"name": "beats_baselines", "passed": False, "values": {metric: tuned},
                "summary": f"no baseline was measured, so {metric} {tuned:.4f} shows no improvement"}
    lower = metric in LOWER_IS_BETTER
    best_name = (min if lower else max)(baselines, key=baselines.get)
    best = baselines[best_name]
    improvement = best - tuned if lower else tuned - best
    passed = improvement > 0 and improvement >= margin
    verdict = "beats" if passed else "does not beat"
    return {
        "name": "beats_baselines", "passed": passed,
        "values": {metric: tuned, f"best_baseline_{metric}": best, "improvement": improvement, "min_margin": margin},
        "summary": (f"{metric} {tuned:.4f} {verdict} the best baseline ({best_name}, {best:.4f}) by the required "
                    f"margin {margin:g}: improvement {improvement:+.4f}"),
    }


def _forgetting_ceiling(report: dict, ceiling: float) -> dict:
    block = report.get("forgetting")
    if block is None:
        return {"name": "forgetting_ceiling", "passed": False, "values": {"max_forgetting": ceiling},
                "summary": "forgetting was not measured (its corpus or base split gave no texts), so it cannot be "
                           f"shown to stay under {ceiling:g}"}
    figure = forgetting_figure(block)
    what = ("representation drift" if block["kind"] == "encoder" else "loss increase") + f" on {forgetting_source(block)}"
    passed = figure <= ceiling
    return {
        "name": "forgetting_ceiling", "passed": passed,
        "values": {"forgetting": figure, "max_forgetting": ceiling},
        "summary": f"{what} {figure:.4f} is {'within' if passed else 'above'} the ceiling {ceiling:g}",
    }
