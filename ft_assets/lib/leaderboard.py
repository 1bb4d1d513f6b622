"""One table and one chart comparing every recipe on a dataset, in one schema for every method."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

# The leaderboard schema: one row per recipe, these keys, sorted by the task metric.
COLUMNS = ("recipe", "method", "accuracy", "macro_f1", "delta_vs_base", "trainable_params", "trainable_share",
           "train_seconds", "examples_per_sec", "peak_mem_bytes", "checkpoint_bytes")


def leaderboard_rows(reports: list[dict]) -> list[dict]:
    """Rows from eval.json reports, best accuracy first (ties: fewer trainable parameters first).

    delta_vs_base is the accuracy gain over the untuned base with a trained head (the report's
    base_head_only baseline); a head_only recipe is that base, so its delta is 0.
    """
    rows = []
    for r in reports:
        cost = r["cost"]
        base = r["baselines"].get("base_head_only", {}).get("accuracy", r["accuracy"])
        rows.append({
            "recipe": r["recipe"], "method": r["method"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
            "delta_vs_base": r["accuracy"] - base, "trainable_params": cost["trainable_params"],
            "trainable_share": cost["trainable_params"] / cost["total_params"],
            "train_seconds": cost["train_seconds"], "examples_per_sec": cost["examples_per_sec"],
            "peak_mem_bytes": cost["peak_mem_bytes"], "checkpoint_bytes": cost["checkpoint_bytes"],
        })
    return sorted(rows, key=lambda row: (-row["accuracy"], row["trainable_params"]))


def render_chart(rows: list[dict], majority: float | None, title: str) -> bytes:
    """PNG: test accuracy per recipe beside the share of parameters it trained."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    names = [r["recipe"] for r in rows][::-1]
    fig, (acc_ax, share_ax) = plt.subplots(1, 2, figsize=(10, 0.5 * len(rows) + 1.8), sharey=True)
    acc_ax.barh(names, [r["accuracy"] for r in rows][::-1], color="#4c72b0")
    if majority is not None:
        acc_ax.axvline(majority, color="#c44e52", linestyle="--", label=f"majority class {majority:.3f}")
        acc_ax.legend(loc="lower left", fontsize=8)
    low = min([r["accuracy"] for r in rows] + ([majority] if majority is not None else []))
    acc_ax.set_xlim(max(0.0, low - 0.05), 1.0)
    acc_ax.set_xlabel("test accuracy")
    for y, r in enumerate(rows[::-1]):
        acc_ax.annotate(f"{r['accuracy']:.4f}", (r["accuracy"], y), xytext=(-4, 0), textcoords="offset points",
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def render_markdown(rows: list[dict], dataset: str, image_ref: str, missing: list[str]) -> str:
    """The table, then the chart at `image_ref` (a file name, or a data: URI for the Dagster UI)."""
    lines = [
        f"# Leaderboard: {dataset}", "",
        "| # | recipe | method | accuracy | macro-F1 | Δ vs base | trainable | share | train s | examples/s "
        "| peak memory | checkpoint |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rows, start=1):
        lines.append(
            f"| {i} | {r['recipe']} | {r['method']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
            f"{r['delta_vs_base']:+.4f} | {r['trainable_params']:,} | {r['trainable_share']:.2%} | "
            f"{r['train_seconds']:.1f} | {r['examples_per_sec']:.1f} | {r['peak_mem_bytes'] / 2**20:,.0f} MiB | "
            f"{r['checkpoint_bytes'] / 2**20:,.1f} MiB |"
        )
    if missing:
        lines += ["", f"No report yet for: {', '.join(missing)}."]
    lines += ["", f"![leaderboard]({image_ref})", ""]
    return "\n".join(lines)


def write_leaderboard(reports: list[dict], dataset: str, out_dir: Path, missing: list[str]) -> tuple[list[dict], str]:
    """Writes leaderboard.json, leaderboard.md and leaderboard.png; returns the rows and the markdown."""
    rows = leaderboard_rows(reports)
    majority = reports[0]["baselines"]["majority"]["accuracy"] if reports else None
    chart = render_chart(rows, majority, f"{dataset}: {len(rows)} recipes")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "leaderboard.json").write_text(json.dumps({"dataset": dataset, "rows": rows}, indent=2) + "\n")
    (out_dir / "leaderboard.png").write_bytes(chart)
    (out_dir / "leaderboard.md").write_text(render_markdown(rows, dataset, "leaderboard.png", missing))
    embedded = f"data:image/png;base64,{base64.b64encode(chart).decode()}"
    return rows, render_markdown(rows, dataset, embedded, missing)
