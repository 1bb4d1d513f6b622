"""Evaluates one tuned checkpoint against its baselines and writes eval.json and report.md."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ft_assets.lib.config import RecipeConfig, stable_hash
from ft_assets.lib.evaluate import (
    ClassificationMetrics, classification_metrics, majority_baseline, predict_logits, resolve_device, write_report,
)
from ft_assets.lib.models import TRAIN_INFO_FILE, load_checkpoint, resolve_base_model, weights_sha256
from ft_assets.lib.storage import directory_bytes


@dataclass(frozen=True)
class EvaluationResult:
    report: dict
    eval_path: Path
    markdown: str


def evaluate_checkpoint(recipe: RecipeConfig, checkpoint_dir: Path, splits: dict[str, dict[str, list]],
                        out_dir: Path, baseline_cache: Path, device: str = "auto") -> EvaluationResult:
    """Scores the checkpoint on splits["test"] and compares it with the baselines.

    Args:
        splits: "train", "validation", "test" -> {"text": [...], "label": [...]}.
        baseline_cache: a folder of baseline results keyed by everything they depend on, so
            recipes that share a dataset, base model and training settings train it once.

    The head_only baseline is the untuned base with a head trained the recipe's way (same data,
    epochs, batch size and seed), so the only difference to the recipe is the method.
    """
    device = resolve_device(device)
    model, tokenizer, labels = load_checkpoint(checkpoint_dir)
    model.to(device)
    test = splits["test"]
    cfg = recipe.training
    predicted = _predict_labels(model, tokenizer, test["text"], labels, cfg.max_length, cfg.batch_size, device)
    metrics = classification_metrics(test["label"], predicted, labels)

    baselines = {"majority": majority_baseline(splits["train"]["label"], test["label"], labels)}
    if recipe.method != "head_only":
        baselines["base_head_only"] = _base_head_baseline(recipe, labels, splits, baseline_cache, device)

    info = json.loads((checkpoint_dir / TRAIN_INFO_FILE).read_text())
    cost = {
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        "train_seconds": info["train_seconds"],
        "examples_per_sec": info["examples_per_sec"],
        "peak_mem_bytes": info["peak_mem_bytes"],
        "peak_mem_kind": info["peak_mem_kind"],
        "checkpoint_bytes": directory_bytes(checkpoint_dir),
        "device": info["device"],
        "device_name": info["device_name"],
    }
    report = {
        # Headline numbers first, flat, for tools and for the Dagster UI's plots.
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "n_test": metrics.n,
        "trainable_params": cost["trainable_params"],
        "total_params": cost["total_params"],
        "train_seconds": cost["train_seconds"],
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash(),
        "method": recipe.method,
        "dataset": recipe.dataset,
        "base_model": recipe.base_model,
        "checkpoint": str(checkpoint_dir),
        "labels": labels,
        "metrics": metrics.as_dict(),
        "baselines": {name: b.as_dict() for name, b in baselines.items()},
        "cost": cost,
    }
    eval_path, markdown = write_report(report, out_dir)
    return EvaluationResult(report=report, eval_path=eval_path, markdown=markdown)


def _base_head_baseline(recipe: RecipeConfig, labels: list[str], splits: dict, cache: Path,
                        device: str) -> ClassificationMetrics:
    head_recipe = RecipeConfig.model_validate({
        **recipe.model_dump(mode="json"), "name": "base_head_only", "method": "head_only", "method_args": {},
        # The base's own defaults for head_only, not the recipe's rates (full trains its head at 1e-3).
        "training": {**recipe.training.model_dump(mode="json"), "learning_rate": None, "head_learning_rate": None},
    })
    key = stable_hash({
        "recipe": head_recipe.recipe_hash(), "labels": labels, "train": splits["train"], "test": splits["test"],
        "base_weights": weights_sha256(resolve_base_model(recipe.base_model)),
    })
    cached = cache / f"{key}.json"
    if cached.exists():
        return ClassificationMetrics(**json.loads(cached.read_text()))
    from ft_assets.lib.train import fit

    fitted = fit(head_recipe, labels, splits["train"], None, device=device)
    cfg = recipe.training
    predicted = _predict_labels(fitted.model, fitted.tokenizer, splits["test"]["text"], labels,
                                cfg.max_length, cfg.batch_size, device)
    metrics = classification_metrics(splits["test"]["label"], predicted, labels)
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(dataclasses.asdict(metrics)))
    return metrics


def _predict_labels(model, tokenizer, texts, labels, max_length, batch_size, device) -> list[str]:
    logits = predict_logits(model, tokenizer, texts, max_length=max_length, batch_size=batch_size * 2, device=device)
    return [labels[i] for i in logits.argmax(-1)]
