"""One table and one chart comparing every recipe on a dataset, in one schema for every method."""

from __future__ import annotations

import json
from pathlib import Path

from ft_assets.lib.config import LOWER_IS_BETTER, TASK_METRICS
from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.evaluation.forgetting import forgetting_source
from ft_assets.lib.evaluation.plots import data_uri, png_bytes, pyplot


def untuned_base(report: dict) -> dict | None:
    """The report's untuned-base baseline: the base with a trained head for classifiers (none for a
    head_only recipe, which is that base), the base model itself for causal LMs, the model training started
    from for preference recipes."""
    task = report.get("task", "classification")
    return report["baselines"].get({"classification": "base_head_only", "preference": "reference"}.get(task, "base"))


def forgetting_figure(block: dict | None) -> float | None:
    """One number per recipe: representation drift for encoders, the loss increase for causal LMs (on the
    texts the block names: lib/evaluation/forgetting.py)."""
    if block is None:
        return None
    return block["representation_drift"] if block["kind"] == "encoder" else block["loss_increase"]


def leaderboard_rows(reports: list[dict]) -> list[dict]:
    """Rows from eval.json reports, best headline metric first (ties: fewer trainable parameters first).

    delta_vs_base is the headline metric's change against the untuned base: for classification
    the base with a trained head (the report's base_head_only baseline; a head_only recipe is that
    base, so its delta is 0), for causal LMs the base model itself.
    """
    rows = []
    for r in reports:
        task = r.get("task", "classification")
        metric, columns = TASK_METRICS[task]
        cost = TrainingCost.model_validate(r["cost"])
        base = (untuned_base(r) or r)[metric]
        rows.append({
            "recipe": r["recipe"], "method": r["method"], "task": task, "metric": metric,
            **{c: r[c] for c in columns},
            "delta_vs_base": r[metric] - base,
            **cost.model_dump(include={"trainable_params", "train_seconds", "examples_per_sec", "tokens_per_sec",
                                       "peak_mem_bytes", "checkpoint_bytes"}),
            "trainable_share": cost.trainable_share,
            "forgetting": forgetting_figure(r.get("forgetting")),
            "forgetting_on": forgetting_source(r["forgetting"]) if r.get("forgetting") else None,
        })
    return sorted(rows, key=lambda row: (row[row["metric"]] if row["metric"] in LOWER_IS_BETTER else -row[row["metric"]],
                                         row["trainable_params"]))


def model_free_baseline(report: dict) -> tuple[str, float] | None:
    """The baseline that needs no model, as (label, headline metric): the majority class of a classifier,
    the length-only ranking of preference pairs; None for the other tasks."""
    baselines = report["baselines"]
    if "majority" in baselines:
        return "majority class", baselines["majority"]["accuracy"]
    if "length" in baselines:
        return "length only", baselines["length"]["preference_accuracy"]
    return None


def render_chart(rows: list[dict], simple: tuple[str, float] | None, title: str) -> bytes:
    """PNG: the headline test metric per recipe beside the share of parameters it trained."""
    plt = pyplot()

    metric = rows[0]["metric"]
    names = [r["recipe"] for r in rows][::-1]
    fig, (acc_ax, share_ax) = plt.subplots(1, 2, figsize=(10, 0.5 * len(rows) + 1.8), sharey=True)
    acc_ax.barh(names, [r[metric] for r in rows][::-1], color="#4c72b0")
    majority = simple[1] if simple is not None else None
    if simple is not None:
        acc_ax.axvline(majority, color="#c44e52", linestyle="--", label=f"{simple[0]} {majority:.3f}")
        acc_ax.legend(loc="lower left", fontsize=8)
    if metric == "perplexity":
        acc_ax.set_xscale("log")
        acc_ax.set_xlabel("test perplexity (lower is better, log scale)")
    else:
        low = min([r[metric] for r in rows] + ([majority] if majority is not None else []))
        acc_ax.set_xlim(max(0.0, low - 0.05), 1.0)
        acc_ax.set_xlabel(f"test {metric.replace('_', '-')}")
    for y, r in enumerate(rows[::-1]):
        acc_ax.annotate(f"{r[metric]:.4f}", (r[metric], y), xytext=(-4, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=8, color="white")
    share_ax.barh(names, [100 * r["trainable_share"] for r in rows][::-1], color="#55a868")
    share_ax.set_xscale("log")
    share_ax.set_xlim(right=100 * 4)  # room for the time labels
    share_ax.set_xlabel("trainable parameters (% of model, log scale)")
    for y, r in enumerate(rows[::-1]):
        share_ax.annotate(f"{r['train_seconds']:.0f} s", (100 * r["trainable_share"], y), xytext=(4, 0),
                          textcoords="offset points", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return png_bytes(fig)


HEADERS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "rouge_l": "ROUGE-L", "exact_match": "exact match",
           "perplexity": "perplexity", "eval_loss": "eval loss", "preference_accuracy": "preference accuracy",
           "reward_margin": "reward margin"}


def render_markdown(rows: list[dict], dataset: str, image_ref: str, missing: list[str]) -> str:
    """The table, then the chart at `image_ref` (a file name, or a data: URI for the Dagster UI)."""
    columns = TASK_METRICS[rows[0]["task"]][1] if rows else ()
    lines = [
        f"# Leaderboard: {dataset}", "",
        "| # | recipe | method | " + " | ".join(HEADERS[c] for c in columns) + " | Δ vs base | trainable | share "
        "| train s | examples/s | tokens/s | peak memory | checkpoint | forgetting |",
        "| ---: | --- | --- |" + " ---: |" * len(columns) + " ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rows, start=1):
        tokens = f"{r['tokens_per_sec']:,.0f}" if r["tokens_per_sec"] is not None else "—"
        lines.append(
            f"| {i} | {r['recipe']} | {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in columns) + " | "
            f"{r['delta_vs_base']:+.4f} | {r['trainable_params']:,} | {r['trainable_share']:.2%} | "
            f"{r['train_seconds']:.1f} | {r['examples_per_sec']:.1f} | {tokens} | {r['peak_mem_bytes'] / 2**20:,.0f} MiB | "
            f"{r['checkpoint_bytes'] / 2**20:,.1f} MiB | "
            + (f"{r['forgetting']:.4f}" if r["forgetting"] is not None else "—") + " |"
        )
    measured = [r for r in rows if r["forgetting"] is not None]
    if measured:
        where = {r["forgetting_on"] for r in measured}
        on = (next(iter(where)) if len(where) == 1
              else "; ".join(f"{r['recipe']}: {r['forgetting_on']}" for r in measured))
        lines += ["", f"Forgetting, on {on}: representation drift of the texts' sentence embeddings (encoders; "
                  "0 = unchanged) or the increase of the per-token loss on them (causal LMs; 0 = nothing lost)."]
    if missing:
        lines += ["", f"No report yet for: {', '.join(missing)}."]
    lines += ["", f"![leaderboard]({image_ref})", ""]
    return "\n".join(lines)


def write_leaderboard(reports: list[dict], dataset: str, out_dir: Path, missing: list[str]) -> tuple[list[dict], str]:
    """Writes leaderboard.json, leaderboard.md and leaderboard.png; returns the rows and the markdown."""
    rows = leaderboard_rows(reports)
    chart = render_chart(rows, model_free_baseline(reports[0]) if reports else None, f"{dataset}: {len(rows)} recipes")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "leaderboard.json").write_text(json.dumps({"dataset": dataset, "rows": rows}, indent=2) + "\n")
    (out_dir / "leaderboard.png").write_bytes(chart)
    (out_dir / "leaderboard.md").write_text(render_markdown(rows, dataset, "leaderboard.png", missing))
    return rows, render_markdown(rows, dataset, data_uri(chart), missing)
