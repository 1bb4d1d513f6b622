"""Task metrics, baselines and the report of one tuned checkpoint.

The report has one schema for every method (as in PEFT's method comparison):
  run_info   recipe, its hash, base model, checkpoint path
  metrics    accuracy, macro_f1, per-class table, confusion matrix on the test split
  baselines  the same metrics for the majority class and for the untuned base with a trained head
  cost       trainable/total parameters, train wall time, examples/s, peak memory, checkpoint size
eval.json keeps the headline numbers at the top level so tools can read them without nesting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def describe_device(device: str) -> str:
    """A person-readable name of the device, for reports: the GPU model, or the CPU model and threads."""
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def predict_logits(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int, device: str) -> np.ndarray:
    """Logits (n_texts, n_labels) in eval mode, batch by batch, in the order of `texts`."""
    import torch

    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            chunks.append(model(**batch).logits.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.num_labels), dtype=np.float32)


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    macro_f1: float
    n: int
    per_class: list[dict]  # label, precision, recall, f1, support
    confusion: list[list[int]]  # rows: true label, columns: predicted label, in `labels` order

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n,
                "per_class": self.per_class, "confusion_matrix": self.confusion}


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> ClassificationMetrics:
    """Accuracy, macro-F1 over `labels`, a per-class table and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]
    return ClassificationMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(np.mean(f1)) if len(labels) else 0.0,
        n=len(y_true),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def majority_baseline(train_labels: list[str], test_labels: list[str], labels: list[str]) -> ClassificationMetrics:
    """Always predict the most frequent training label (ties: the first in `labels`)."""
    counts = {label: train_labels.count(label) for label in labels}
    majority = max(labels, key=lambda label: counts[label])
    return classification_metrics(test_labels, [majority] * len(test_labels), labels)


def write_report(report: dict, out_dir: Path) -> tuple[Path, str]:
    """Writes eval.json and report.md into `out_dir`; returns the json path and the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_path = out_dir / "eval.json"
    eval_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    markdown = render_markdown(report)
    (out_dir / "report.md").write_text(markdown)
    return eval_path, markdown


def render_markdown(report: dict) -> str:
    m, cost, labels = report["metrics"], report["cost"], report["labels"]
    lines = [
        f"# {report['recipe']} — {report['method']} on {report['dataset']}",
        "",
        f"Base model `{report['base_model']}`, test split of {report['n_test']} rows.",
        "",
        "| model | accuracy | macro-F1 |",
        "| --- | ---: | ---: |",
        f"| **{report['recipe']}** (tuned) | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |",
    ]
    for name, b in report["baselines"].items():
        lines.append(f"| baseline: {name} | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |")
    lines += [
        "",
        "## Cost",
        "",
        "| trainable params | total params | share | train seconds | examples/s | peak memory | checkpoint size |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {cost['trainable_params']:,} | {cost['total_params']:,} | "
        f"{cost['trainable_params'] / cost['total_params']:.2%} | {cost['train_seconds']:.1f} | "
        f"{cost['examples_per_sec']:.1f} | {cost['peak_mem_bytes'] / 2**20:,.0f} MiB ({cost['peak_mem_kind']}) | "
        f"{cost['checkpoint_bytes'] / 2**20:,.1f} MiB |",
        "",
        "## Per class",
        "",
        "| label | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c['label']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for c in m["per_class"]
    ]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, m["confusion_matrix"])]
    return "\n".join(lines) + "\n"
