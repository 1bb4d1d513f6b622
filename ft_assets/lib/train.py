"""Fine-tunes one recipe into a checkpoint directory.

    python -m ft_assets.lib.train SPEC.json

SPEC.json (the checkpoint asset writes it; it can also be written by hand):
    recipe           a recipe as in the project YAML (validated again here)
    labels           the label set, in the order of the classifier's outputs
    train_path       parquet with columns text, label
    validation_path  parquet with columns text, label, or null
    output_dir       where the checkpoint appears; must not exist yet
    device           auto | cpu | cuda
    precision        auto | fp32 | bf16 | fp16
    lineage          anything to record in manifest.json (raw files, dataset version, run id)

The checkpoint is written to a staging directory and renamed into place only when complete, so a
crash never leaves a half checkpoint behind. Launched by Dagster Pipes, every logged metric also
goes to the Dagster run log and the run ends with a materialization carrying the cost figures.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.evaluate import describe_device, predict_logits, resolve_device
from ft_assets.lib.methods import apply_method, count_parameters, head_modules
from ft_assets.lib.models import (
    LABELS_FILE, MANIFEST_FILE, MERGED_DIR, METRICS_FILE, TRAIN_INFO_FILE, load_classifier, resolve_base_model,
    weights_sha256,
)
from ft_assets.lib.storage import atomic_directory


class MetricLogger:
    """One vocabulary of snake_case metrics, written to JSONL and to any extra sink (Dagster Pipes)."""

    def __init__(self, sink: Callable[[dict], None] | None = None):
        self.records: list[dict] = []
        self.sink = sink

    def log_dict(self, payload: dict, step: int) -> None:
        record = {"step": step, **payload}
        self.records.append(record)
        if self.sink is not None:
            self.sink(record)

    def write_jsonl(self, path: Path) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records))


@dataclass
class FitResult:
    model: Any
    tokenizer: Any
    train_info: dict
    logger: MetricLogger = field(default_factory=MetricLogger)


def resolve_precision(precision: str, device: str) -> str:
    import torch

    if precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and device != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; on {device} use 'fp32' or 'auto'")
    return precision


def fit(recipe: RecipeConfig, labels: list[str], train_rows: dict[str, list], validation_rows: dict[str, list] | None,
        *, device: str = "auto", precision: str = "auto", logger: MetricLogger | None = None) -> FitResult:
    """Trains `recipe` on in-memory rows ({"text": [...], "label": [...]}) and returns the model.

    Raises:
        ValueError: in setup, before any training step, with the fix in the message.
    """
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    # --- setup ---
    logger = logger or MetricLogger()
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    cfg = recipe.training
    label_ids = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(train_rows["label"]) - set(label_ids))
    if unknown:
        raise ValueError(f"recipe {recipe.name!r}: training rows have labels {unknown} outside the label set {labels}")
    if not train_rows["text"]:
        raise ValueError(f"recipe {recipe.name!r}: the training split is empty")

    torch.manual_seed(cfg.seed)
    base_path = resolve_base_model(recipe.base_model)
    quantized = recipe.method == "qlora"
    if quantized and device != "cuda":
        raise ValueError(f"recipe {recipe.name!r}: qlora needs a CUDA device, the run has {device}; use lora")
    model, tokenizer = load_classifier(base_path, labels, quantize_4bit=quantized)
    model = apply_method(model, recipe.method, recipe.method_args, base_model_path=base_path)
    if not quantized:  # 4-bit weights are placed on the GPU when loaded and cannot move
        model = model.to(device)
    trainable, total = count_parameters(model)

    train_set = Dataset.from_dict({"text": train_rows["text"], "labels": [label_ids[x] for x in train_rows["label"]]})
    train_set = train_set.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=cfg.max_length),
        batched=True, remove_columns=["text"],
    )
    class_weight, sampler = _imbalance_handling(cfg.imbalance, train_set["labels"], len(labels), cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=DataCollatorWithPadding(tokenizer),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    if class_weight is not None:
        class_weight = class_weight.to(device)
    # Biases and LayerNorm weights are not decayed (the usual BERT recipe); the head has its own rate.
    heads = set(head_modules(model))
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_head = any(part in heads for part in name.split("."))
            groups.setdefault((in_head, p.ndim >= 2), []).append(p)
    params = [p for group in groups.values() for p in group]
    optimizer = torch.optim.AdamW([
        {"params": group, "lr": cfg.head_learning_rate if in_head else recipe.learning_rate,
         "weight_decay": cfg.weight_decay if decayed else 0.0}
        for (in_head, decayed), group in groups.items()
    ])
    total_steps = cfg.epochs * math.ceil(len(train_set) / cfg.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_fraction * total_steps), total_steps)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # --- train ---
    step, examples, tokens, last_train_loss = 0, 0, 0, float("nan")
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        running, running_n = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = batch.pop("labels")
            with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(**batch).logits  # (B, n_labels)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, weight=class_weight)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step += 1
            examples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            running += loss.item()
            running_n += 1
            if step % cfg.log_every_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                last_train_loss = running / running_n
                logger.log_dict({"epoch": epoch, "train_loss": last_train_loss,
                                 "learning_rate": recipe.learning_rate * scheduler.get_last_lr()[0]
                                 / optimizer.param_groups[0]["initial_lr"],
                                 "examples_per_sec": examples / elapsed}, step)
                running, running_n = 0.0, 0
        if validation_rows and validation_rows["text"]:
            logger.log_dict({"epoch": epoch, **_validation_metrics(model, tokenizer, validation_rows, label_ids,
                                                                     cfg, device)}, step)
    train_seconds = time.perf_counter() - started

    train_info = {
        "status": "success",
        "device": device,
        "device_name": describe_device(device),
        "precision": precision,
        "steps": step,
        "epochs": cfg.epochs,
        "train_examples": len(train_set),
        "train_seconds": train_seconds,
        "examples_per_sec": examples / train_seconds,
        "tokens_per_sec": tokens / train_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "peak_mem_bytes": _peak_memory_bytes(device),
        "peak_mem_kind": "cuda_allocated" if device == "cuda" else "process_rss",
        "final_train_loss": last_train_loss,
        "final_eval": next((r for r in reversed(logger.records) if "eval_loss" in r), None),
    }
    return FitResult(model=model, tokenizer=tokenizer, train_info=train_info, logger=logger)


def _imbalance_handling(imbalance: str, label_ids: list[int], n_labels: int, seed: int):
    """(class weights for the loss, sampler for the loader); None where the setting does not use one."""
    import numpy as np
    import torch

    counts = np.bincount(label_ids, minlength=n_labels).astype(np.float64)
    if imbalance == "class_weights":
        # sklearn's "balanced": n / (k * n_class); a class absent from train gets weight 0.
        weights = np.divide(len(label_ids), n_labels * counts, out=np.zeros_like(counts), where=counts > 0)
        return torch.tensor(weights, dtype=torch.float32), None
    if imbalance == "balanced_sampler":
        per_example = torch.tensor([1.0 / counts[i] for i in label_ids], dtype=torch.float64)
        sampler = torch.utils.data.WeightedRandomSampler(per_example, num_samples=len(label_ids), replacement=True,
                                                         generator=torch.Generator().manual_seed(seed))
        return None, sampler
    return None, None


def _validation_metrics(model, tokenizer, rows, label_ids, cfg, device) -> dict:
    import torch

    logits = predict_logits(model, tokenizer, rows["text"], max_length=cfg.max_length,
                            batch_size=cfg.batch_size * 2, device=device)
    target = torch.tensor([label_ids.get(x, -100) for x in rows["label"]])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), target, ignore_index=-100).item()
    accuracy = float((logits.argmax(-1) == target.numpy()).mean())
    return {"eval_loss": loss, "eval_accuracy": accuracy}


def _peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def save_checkpoint(result: FitResult, recipe: RecipeConfig, labels: list[str], output_dir: Path,
                    lineage: dict) -> dict:
    """Writes the checkpoint atomically and returns its manifest."""
    base_path = resolve_base_model(recipe.base_model)
    manifest = {
        "recipe": recipe.model_dump(mode="json"),
        "recipe_hash": recipe.recipe_hash(),
        "base_model": {"id": recipe.base_model, "path": base_path, "weights_sha256": weights_sha256(base_path)},
        "labels": labels,
        "libraries": _library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_info": result.train_info,
        **lineage,
    }
    with atomic_directory(output_dir) as staging:
        result.model.save_pretrained(staging, safe_serialization=True)
        result.tokenizer.save_pretrained(staging)
        if recipe.export == "merged":
            _export_merged(staging, base_path, labels, result.tokenizer)
        (staging / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n")
        (staging / TRAIN_INFO_FILE).write_text(json.dumps(result.train_info, indent=2) + "\n")
        result.logger.write_jsonl(staging / METRICS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _export_merged(adapter_dir: Path, base_path: str, labels: list[str], tokenizer) -> None:
    """Folds the adapter into an unquantized copy of the base (never into 4-bit weights) under merged/."""
    from peft import PeftModel

    base, _ = load_classifier(base_path, labels)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(adapter_dir / MERGED_DIR, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir / MERGED_DIR)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("ft_assets", "torch", "transformers", "peft", "datasets", "duckdb"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _read_rows(path: str | None) -> dict[str, list] | None:
    if path is None:
        return None
    table = pq.read_table(path, columns=["text", "label"])
    return {"text": table.column("text").to_pylist(), "label": table.column("label").to_pylist()}


def run(spec: dict, logger: MetricLogger) -> dict:
    """Setup → train → save, from a spec dict; returns the manifest."""
    recipe = RecipeConfig.model_validate(spec["recipe"])
    result = fit(recipe, spec["labels"], _read_rows(spec["train_path"]), _read_rows(spec.get("validation_path")),
                 device=spec.get("device", "auto"), precision=spec.get("precision", "auto"), logger=logger)
    return save_checkpoint(result, recipe, spec["labels"], Path(spec["output_dir"]), spec.get("lineage", {}))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m ft_assets.lib.train SPEC.json")
    spec = json.loads(Path(argv[0]).read_text())
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        manifest = run(spec, MetricLogger(sink=lambda r: print(json.dumps(r), flush=True)))
        print(json.dumps({"checkpoint": spec["output_dir"], "train_info": manifest["train_info"]}))
        return

    with open_dagster_pipes() as pipes:
        manifest = run(spec, MetricLogger(sink=lambda r: pipes.log.info(
            "step " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        )))
        info = manifest["train_info"]
        pipes.report_asset_materialization(metadata={
            "checkpoint_path": {"raw_value": spec["output_dir"], "type": "path"},
            "train_seconds": {"raw_value": info["train_seconds"], "type": "float"},
            "examples_per_sec": {"raw_value": info["examples_per_sec"], "type": "float"},
            "trainable_params": {"raw_value": info["trainable_params"], "type": "int"},
            "total_params": {"raw_value": info["total_params"], "type": "int"},
            "peak_mem_bytes": {"raw_value": info["peak_mem_bytes"], "type": "int"},
            "final_train_loss": {"raw_value": info["final_train_loss"], "type": "float"},
            "device": {"raw_value": f"{info['device']} ({info['device_name']}, {info['precision']})", "type": "text"},
        })


if __name__ == "__main__":
    main()
