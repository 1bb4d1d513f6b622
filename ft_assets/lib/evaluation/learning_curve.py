"""How much data each method needs: one entry per (recipe, fraction) point, one table and one chart.

A point is a recipe trained on a nested share of the train split (lib/datasets/subsets.py) and scored on
the whole test split like the recipe's own report; the full-data point of a recipe is its own report.
Per recipe the curve names the smallest fraction whose headline metric is within one point of its
full-data result: 0.01 for the metrics between 0 and 1 (accuracy, ROUGE-L, preference accuracy), 1% of
the full-data value for perplexity. Nothing here reads a split: the points come from their eval.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from ft_assets.lib.config import LOWER_IS_BETTER, TASK_METRICS
from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.evaluation.leaderboard import model_free_baseline, untuned_base
from ft_assets.lib.evaluation.plots import data_uri, png_bytes, pyplot

CURVE_FILE = "learning_curve.json"


def curve_point(report: dict, recipe: str, fraction: float, n_train: int, seed: int) -> dict:
    """One point, in the one schema of every method (the report's headline figures and its cost)."""
    metric, columns = TASK_METRICS[report.get("task", "classification")]
    cost = TrainingCost.model_validate(report["cost"])
    return {"recipe": recipe, "method": report["method"], "fraction": fraction, "n_train": n_train, "seed": seed,
            "metric": metric, "metrics": {c: report[c] for c in columns}, "n_test": report["n_test"],
            "train_seconds": cost.train_seconds, "trainable_params": cost.trainable_params,
            "published_step": (report.get("training") or {}).get("published_step")}


def within_one_point(metric: str, value: float, full: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return value <= full * 1.01
    return value >= full - 0.01


def learning_curve(dataset: str, points: list[dict], full_reports: dict[str, tuple[dict, int]], seed: int) -> dict:
    """The curve: every point, and the full-data ones from `full_reports` (recipe -> its report and its number
    of training examples), per recipe the smallest fraction within one point of full data, and the untuned
    and model-free baselines of the full reports."""
    everything = points + [curve_point(report, recipe, 1.0, n_train, seed)
                           for recipe, (report, n_train) in full_reports.items()]
    everything.sort(key=lambda p: (p["recipe"], p["fraction"]))
    metric = everything[0]["metric"] if everything else None
    per_recipe = {}
    for recipe in sorted({p["recipe"] for p in everything}):
        mine = [p for p in everything if p["recipe"] == recipe]
        full = next((p for p in mine if p["fraction"] == 1.0), None)
        enough = next((p for p in mine if full and within_one_point(metric, p["metrics"][metric],
                                                                     full["metrics"][metric])), None)
        per_recipe[recipe] = {
            "method": mine[0]["method"],
            "full_data": full["metrics"][metric] if full else None,
            "smallest_fraction_within_1_point": enough["fraction"] if enough else None,
            "n_train_within_1_point": enough["n_train"] if enough else None,
        }
    baselines = {}
    for report, _ in full_reports.values():
        untuned = untuned_base(report)
        if untuned is not None:
            baselines.setdefault("untuned", untuned[metric])
        free = model_free_baseline(report)
        if free is not None:
            baselines.setdefault(free[0], free[1])
    return {"dataset": dataset, "seed": seed, "metric": metric, "points": everything, "recipes": per_recipe,
            "baselines": baselines, "missing_full_data": sorted(r for r, v in per_recipe.items() if v["full_data"] is None)}


def baseline_label(curve: dict, name: str) -> str:
    """A classifier cannot answer without a head, so its untuned baseline is the frozen base with a head trained
    on the whole train split: a reader must not take the line for a model that learned nothing."""
    if name == "untuned" and curve["metric"] == TASK_METRICS["classification"][0]:
        return "untuned base + head trained on all the data"
    return name


def curve_chart(curve: dict) -> bytes:
    """Metric against training examples (log scale), one line per recipe, the baselines as horizontal lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for recipe, summary in curve["recipes"].items():
        mine = [p for p in curve["points"] if p["recipe"] == recipe]
        ax.plot([p["n_train"] for p in mine], [p["metrics"][curve["metric"]] for p in mine], marker="o",
                label=f"{recipe} ({summary['method']})")
    for (name, value), style in zip(curve["baselines"].items(), ("--", ":", "-.")):
        ax.axhline(value, color="grey", linestyle=style, label=baseline_label(curve, name))
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"test {curve['metric']}")
    ax.set_title(f"{curve['dataset']}: learning curve")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return png_bytes(fig)


def render_markdown(curve: dict, image: str) -> str:
    metric = curve["metric"]
    lines = [f"# Learning curve: {curve['dataset']}", "",
             f"Test {metric} of each recipe trained on nested, stratified shares of the train split (seed "
             f"{curve['seed']}), every point scored on the whole test split; fraction 1 is the recipe's own report.",
             "", "| recipe | method | fraction | train examples | " + metric + " | train s | trainable params |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in curve["points"]:
        lines.append(f"| {p['recipe']} | {p['method']} | {p['fraction']:g} | {p['n_train']:,} | "
                     f"{p['metrics'][metric]:.4f} | {p['train_seconds']:.1f} | {p['trainable_params']:,} |")
    lines += ["", "| recipe | method | full data | within 1 point from |", "| --- | --- | ---: | --- |"]
    for recipe, s in curve["recipes"].items():
        full = "-" if s["full_data"] is None else f"{s['full_data']:.4f}"
        enough = ("-" if s["smallest_fraction_within_1_point"] is None
                  else f"{s['smallest_fraction_within_1_point']:g} ({s['n_train_within_1_point']:,} examples)")
        lines.append(f"| {recipe} | {s['method']} | {full} | {enough} |")
    if curve["baselines"]:
        lines += ["", "Baselines: " + ", ".join(f"{baseline_label(curve, k)} {v:.4f}"
                                                for k, v in curve["baselines"].items()) + "."]
    if curve["missing_full_data"]:
        lines += ["", "No full-data report yet for: " + ", ".join(curve["missing_full_data"])
                  + " (materialize reports/<recipe>)."]
    lines += ["", f"![learning_curve]({image})", ""]
    return "\n".join(lines)


def write_learning_curve(curve: dict, out_dir: Path) -> str:
    """Writes learning_curve.json, learning_curve.md and learning_curve.png; returns the markdown for the UI."""
    chart = curve_chart(curve)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CURVE_FILE).write_text(json.dumps(curve, indent=2) + "\n")
    (out_dir / "learning_curve.png").write_bytes(chart)
    (out_dir / "learning_curve.md").write_text(render_markdown(curve, "learning_curve.png"))
    return render_markdown(curve, data_uri(chart))
