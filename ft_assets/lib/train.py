"""Fine-tunes one recipe into a checkpoint directory.

    python -m ft_assets.lib.train SPEC.json

SPEC.json (the checkpoint asset writes it; it can also be written by hand):
    recipe           a recipe as in the project YAML (validated again here)
    task             classification | instruction | language_modeling
    labels           the label set, in the order of the classifier's outputs ([] for causal LMs)
    base_model_path  the base model's directory when the recipe's base_model is checkpoint:<recipe>
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
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from ft_assets.lib.config import SCRATCH, RecipeConfig
from ft_assets.lib.evaluate import describe_device, predict_logits, resolve_device
from ft_assets.lib.lineage import checkpoint_file_hashes
from ft_assets.lib.methods import apply_method, count_parameters, head_modules
from ft_assets.lib.models import (
    LABELS_FILE, MANIFEST_FILE, MERGED_DIR, METRICS_FILE, TRAIN_INFO_FILE, TRAINING_ERROR_FILE, build_scratch_model,
    load_causal_lm, load_classifier, resolve_base_model, weights_sha256,
)
from ft_assets.lib.model_card import CARD_FILE, render_model_card
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
    train_info: dict  # its "task" says which kind of checkpoint this is
    logger: MetricLogger = field(default_factory=MetricLogger)
    base_model_path: str | None = None  # the base as resolved for training; None for scratch


def resolve_precision(precision: str, device: str) -> str:
    import torch

    if precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and device != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; on {device} use 'fp32' or 'auto'")
    return precision


def fit(recipe: RecipeConfig, labels: list[str], train_rows: dict[str, list], validation_rows: dict[str, list] | None,
        *, task: str = "classification", base_model_path: str | None = None, device: str = "auto",
        precision: str = "auto", logger: MetricLogger | None = None) -> FitResult:
    """Trains `recipe` on in-memory rows ({"text": [...], "label": [...]}) and returns the model.

    Args:
        labels: the classifier's outputs, in order; [] for the causal-LM tasks.
        task: the dataset's task: classification, instruction (text holds chat messages JSON) or
            language_modeling.
        base_model_path: where the base model is, for base_model checkpoint:<recipe>; None resolves
            the recipe's base_model.

    Raises:
        ValueError: in setup, before any training step, with the fix in the message.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    # --- setup ---
    logger = logger or MetricLogger()
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    cfg = recipe.training
    if not train_rows["text"]:
        raise ValueError(f"recipe {recipe.name!r}: the training split is empty")
    quantized = recipe.method == "qlora"
    if quantized and device != "cuda":
        raise ValueError(f"recipe {recipe.name!r}: qlora needs a CUDA device, the run has {device}; use lora")

    torch.manual_seed(cfg.seed)
    if task == "classification":
        data = _classification_data(recipe, labels, train_rows, validation_rows, base_model_path, device)
    else:
        data = _causal_data(recipe, task, train_rows, validation_rows, base_model_path, device)
    model = data.model
    if not quantized:  # 4-bit weights are placed on the GPU when loaded and cannot move
        model = model.to(device)
    trainable, total = count_parameters(model)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=cfg.batch_size, shuffle=data.sampler is None, sampler=data.sampler,
        collate_fn=data.collate, generator=torch.Generator().manual_seed(cfg.seed),
    )
    # Biases and LayerNorm weights are not decayed (the usual BERT recipe); a new head has its own rate.
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_head = any(part in data.heads for part in name.split("."))
            groups.setdefault((in_head, p.ndim >= 2), []).append(p)
    params = [p for group in groups.values() for p in group]
    optimizer = torch.optim.AdamW([
        {"params": group, "lr": cfg.head_learning_rate if in_head else recipe.learning_rate,
         "weight_decay": cfg.weight_decay if decayed else 0.0}
        for (in_head, decayed), group in groups.items()
    ])
    total_steps = cfg.epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_fraction * total_steps), total_steps)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # --- train ---
    step, examples, tokens, last_train_loss = 0, 0, 0, float("nan")
    train_seconds = 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        running, running_n = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            n_tokens = int(batch.pop("n_tokens").sum())
            with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = data.loss(model, batch)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step += 1
            examples += batch["input_ids"].shape[0]
            tokens += n_tokens
            running += loss.item()
            running_n += 1
            if step % cfg.log_every_steps == 0 or step == total_steps:
                elapsed = train_seconds + time.perf_counter() - started
                last_train_loss = running / running_n
                logger.log_dict({"epoch": epoch, "train_loss": last_train_loss,
                                 "learning_rate": recipe.learning_rate * scheduler.get_last_lr()[0]
                                 / optimizer.param_groups[0]["initial_lr"],
                                 "examples_per_sec": examples / elapsed, "tokens_per_sec": tokens / elapsed}, step)
                running, running_n = 0.0, 0
        # Validation is not training time: the throughput figures count training steps only.
        train_seconds += time.perf_counter() - started
        if data.validate is not None:
            logger.log_dict({"epoch": epoch, **data.validate(model)}, step)

    train_info = {
        "status": "success",
        "task": task,
        "device": device,
        "device_name": describe_device(device),
        "precision": precision,
        "steps": step,
        "epochs": cfg.epochs,
        "train_examples": len(data.train_set),
        "train_seconds": train_seconds,
        "examples_per_sec": examples / train_seconds,
        "tokens_per_sec": tokens / train_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "peak_mem_bytes": _peak_memory_bytes(device),
        "peak_mem_kind": "cuda_allocated" if device == "cuda" else "process_rss",
        "final_train_loss": last_train_loss,
        "final_eval": next((r for r in reversed(logger.records) if "eval_loss" in r), None),
        **data.info,
    }
    return FitResult(model=model, tokenizer=data.tokenizer, train_info=train_info, logger=logger,
                     base_model_path=data.base_model_path)


@dataclass
class _TrainingData:
    """What the loop needs from a task: the model to train, its examples and how to score a batch."""

    model: Any
    tokenizer: Any
    train_set: Any
    collate: Callable
    loss: Callable  # (model, batch) -> scalar loss
    validate: Callable | None  # (model) -> {"eval_loss": ..., ...}
    heads: set[str]  # module names trained at head_learning_rate
    base_model_path: str | None  # None for a model from scratch
    sampler: Any = None
    info: dict = field(default_factory=dict)  # task figures for train_info


def _classification_data(recipe, labels, train_rows, validation_rows, base_model_path, device) -> _TrainingData:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    cfg = recipe.training
    label_ids = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(train_rows["label"]) - set(label_ids))
    if unknown:
        raise ValueError(f"recipe {recipe.name!r}: training rows have labels {unknown} outside the label set {labels}")
    base_path = base_model_path or resolve_base_model(recipe.base_model)
    model, tokenizer = load_classifier(base_path, labels, quantize_4bit=recipe.method == "qlora", **recipe.loading)
    model = apply_method(model, recipe.method, recipe.method_args, base_model_path=base_path)
    train_set = Dataset.from_dict({"text": train_rows["text"], "labels": [label_ids[x] for x in train_rows["label"]]})
    train_set = train_set.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=cfg.max_length),
        batched=True, remove_columns=["text"],
    )
    class_weight, sampler = _imbalance_handling(cfg.imbalance, train_set["labels"], len(labels), cfg.seed)
    if class_weight is not None:
        class_weight = class_weight.to(device)
    pad = DataCollatorWithPadding(tokenizer)

    def collate(rows):
        batch = pad(rows)
        batch["n_tokens"] = batch["attention_mask"].sum(dim=1)
        return batch

    def loss(model, batch):
        targets = batch.pop("labels")
        logits = model(**batch).logits  # (B, n_labels)
        return torch.nn.functional.cross_entropy(logits.float(), targets, weight=class_weight)

    validate = None
    if validation_rows and validation_rows["text"]:
        def validate(model):
            return _validation_metrics(model, tokenizer, validation_rows, label_ids, cfg, device)

    return _TrainingData(model=model, tokenizer=tokenizer, train_set=train_set, collate=collate, loss=loss,
                         validate=validate, heads=set(head_modules(model)), base_model_path=base_path, sampler=sampler)


def _causal_data(recipe, task, train_rows, validation_rows, base_model_path, device) -> _TrainingData:
    import torch

    from ft_assets.lib.causal_data import causal_loss, collate_causal, perplexity

    cfg = recipe.training
    if recipe.base_model == SCRATCH:
        model, tokenizer = build_scratch_model(recipe.scratch, _tokenizer_corpus(task, train_rows["text"]))
        base_path = None
    else:
        base_path = base_model_path or resolve_base_model(recipe.base_model)
        model, tokenizer = load_causal_lm(base_path, quantize_4bit=recipe.method == "qlora", **recipe.loading)
    model = apply_method(model, recipe.method, recipe.method_args, causal=True, base_model_path=base_path)
    train_set, info = causal_examples(tokenizer, task, train_rows["text"], cfg.max_length, packing=cfg.packing)
    if not train_set:
        raise ValueError(f"recipe {recipe.name!r}: no training example keeps a response token within "
                         f"max_length {cfg.max_length}; raise training.max_length")

    def collate(rows):
        batch = collate_causal(rows, tokenizer.pad_token_id)
        batch["n_tokens"] = torch.tensor([len(row["input_ids"]) for row in rows])  # padding excluded
        return batch

    def loss(model, batch):
        labels = batch.pop("labels")
        # No cache: with one, transformers skips the packed-sequence masking that position_ids ask for.
        return causal_loss(model(**batch, use_cache=False).logits, labels)

    validate = None
    if validation_rows and validation_rows["text"]:
        validation_set, _ = causal_examples(tokenizer, task, validation_rows["text"], cfg.max_length, packing=False)

        def validate(model):
            loss = mean_causal_loss(model, validation_set, tokenizer.pad_token_id, cfg.batch_size, device)
            return {"eval_loss": loss, "eval_perplexity": perplexity(loss)}

    return _TrainingData(model=model, tokenizer=tokenizer, train_set=train_set, collate=collate, loss=loss,
                         validate=validate, heads=set(), base_model_path=base_path, info=info)


def causal_examples(tokenizer, task: str, texts: list[str], max_length: int, *, packing: bool) -> tuple[list[dict], dict]:
    """Training examples of a causal-LM split and figures about them (truncation, packing)."""
    from ft_assets.lib.causal_data import pack_examples, text_blocks, tokenize_conversations

    if task == "language_modeling":
        blocks = text_blocks(tokenizer, texts, max_length)
        return blocks, {"blocks": len(blocks), "block_tokens": max_length}
    examples, counts = tokenize_conversations(tokenizer, texts, max_length)
    if packing:
        packed = pack_examples(examples, max_length)
        counts["packed_sequences"] = len(packed)
        return packed, counts
    return examples, counts


def mean_causal_loss(model, examples: list[dict], pad_token_id: int, batch_size: int, device: str) -> float:
    """Mean next-token loss per labelled token over `examples` (eval mode, no gradient)."""
    import torch

    from ft_assets.lib.causal_data import causal_loss, collate_causal

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate_causal(examples[start:start + batch_size], pad_token_id).items()}
            labels = batch.pop("labels")
            total += causal_loss(model(**batch, use_cache=False).logits, labels, reduction="sum").item()
            count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def _tokenizer_corpus(task: str, texts: list[str]) -> list[str]:
    """The text a scratch tokenizer learns from: message contents for conversations, else the rows."""
    if task != "instruction":
        return texts
    return [m["content"] for conversation in texts for m in json.loads(conversation)]


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
    task, base_path = result.train_info["task"], result.base_model_path
    if recipe.base_model == SCRATCH:
        base = {"id": SCRATCH, "path": None, "weights_sha256": None, "scratch": recipe.scratch.model_dump()}
    else:
        base = {"id": recipe.base_model, "path": base_path, "weights_sha256": weights_sha256(base_path),
                "loading": recipe.loading}
    manifest = {
        "task": task,
        "recipe": recipe.model_dump(mode="json"),
        "recipe_hash": recipe.recipe_hash(),
        "base_model": base,
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
            _export_merged(staging, base_path, labels, result.tokenizer, causal=task != "classification",
                           loading=recipe.loading)
        (staging / LABELS_FILE).write_text(json.dumps({"labels": labels}, indent=2) + "\n")
        (staging / TRAIN_INFO_FILE).write_text(json.dumps(result.train_info, indent=2) + "\n")
        result.logger.write_jsonl(staging / METRICS_FILE)
        # Last, so every file is in place: `ft-assets verify` re-hashes them against this map.
        manifest["files"] = checkpoint_file_hashes(staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        (staging / CARD_FILE).write_text(render_model_card(manifest))
    return manifest


def _export_merged(adapter_dir: Path, base_path: str, labels: list[str], tokenizer, *, causal: bool,
                   loading: dict) -> None:
    """Folds the adapter into an unquantized copy of the base (never into 4-bit weights) under merged/."""
    from peft import PeftModel

    base = load_causal_lm(base_path, **loading)[0] if causal else load_classifier(base_path, labels, **loading)[0]
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
    task, base_path = spec.get("task", "classification"), spec.get("base_model_path")
    result = fit(recipe, spec["labels"], _read_rows(spec["train_path"]), _read_rows(spec.get("validation_path")),
                 task=task, base_model_path=base_path, device=spec.get("device", "auto"),
                 precision=spec.get("precision", "auto"), logger=logger)
    return save_checkpoint(result, recipe, spec["labels"], Path(spec["output_dir"]), spec.get("lineage", {}))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m ft_assets.lib.train SPEC.json")
    spec = json.loads(Path(argv[0]).read_text())
    try:
        _train_from_spec(spec)
    except Exception as e:
        # The orchestrator sees only an exit code: leave it the reason, beside the spec.
        (Path(argv[0]).parent / TRAINING_ERROR_FILE).write_text(f"{type(e).__name__}: {e}")
        raise


def _train_from_spec(spec: dict) -> None:
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
            "tokens_per_sec": {"raw_value": info["tokens_per_sec"], "type": "float"},
            "trainable_params": {"raw_value": info["trainable_params"], "type": "int"},
            "total_params": {"raw_value": info["total_params"], "type": "int"},
            "peak_mem_bytes": {"raw_value": info["peak_mem_bytes"], "type": "int"},
            "final_train_loss": {"raw_value": info["final_train_loss"], "type": "float"},
            "device": {"raw_value": f"{info['device']} ({info['device_name']}, {info['precision']})", "type": "text"},
        })


if __name__ == "__main__":
    main()
