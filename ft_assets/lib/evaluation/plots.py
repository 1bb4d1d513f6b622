"""PNG figures for the reports: training curves and the confusion matrix.

Each function returns PNG bytes; the report writes them beside report.md and embeds them as
data: URIs in the markdown the Dagster UI shows (it renders no relative image paths).
"""

from __future__ import annotations

import base64
import io


def data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG, and closed (pyplot keeps every open figure alive)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    return buffer.getvalue()


def loss_curves(records: list[dict], title: str, published_step: int | None = None) -> bytes | None:
    """Train loss (logged every few steps) and validation loss (each evaluation) against the step, a dashed
    line at the step whose weights were published; None if nothing was logged."""
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#4c72b0")
    if evals:
        ax.plot(*zip(*evals), label="validation loss", color="#c44e52", marker="o")
    if published_step is not None and evals:
        ax.axvline(published_step, color="#55a868", linestyle="--", label=f"published (step {published_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def confusion_matrix(labels: list[str], matrix: list[list[int]], title: str) -> bytes:
    """Counts per (true, predicted) label, rows normalised for the colour so rare classes show too."""
    import numpy as np

    plt = pyplot()
    counts = np.array(matrix)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(2.0 + 0.45 * len(labels), 24.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 6 else 30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if len(labels) <= 20:  # beyond that the numbers would not fit their cells
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return png_bytes(fig)
