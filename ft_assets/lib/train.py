"""Fine-tunes one recipe into a checkpoint directory.

    python -m ft_assets.lib.train SPEC.json
    python -m ft_assets.lib.train --processes N SPEC.json    # torchrun --standalone, N processes (DDP)

SPEC.json (the checkpoint asset writes it; it can also be written by hand; local or s3://):
    recipe           a recipe as in the project YAML (validated again here)
    task             classification | instruction | language_modeling
    labels           the label set, in the order of the classifier's outputs ([] for causal LMs)
    base_model_path  the base model's directory when the recipe's base_model is checkpoint:<recipe>
    train_path       parquet with columns text, label (local or s3://)
    validation_path  parquet with columns text, label, or null
    output_dir       where the checkpoint appears; must not exist yet
    publish_uri      optional: an s3:// prefix the finished checkpoint is copied to, manifest last
    resume_dir       optional: where step states are kept so that a killed run resumes (lib/resume.py;
                     local or s3://)
    device           auto | cpu | cuda
    precision        auto | fp32 | bf16 | fp16
    lineage          anything to record in manifest.json (raw files, dataset version, run id)

The checkpoint is written to a staging directory and renamed into place only when complete, so a
crash never leaves a half checkpoint behind. Launched by Dagster Pipes, every logged metric also
goes to the Dagster run log and the run ends with a materialization carrying the cost figures.
Under torchrun every process trains (DDP); only rank 0 talks to Dagster and saves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import posixpath
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
from ft_assets.lib.methods import apply_method, count_parameters, head_modules, transformer_blocks
from ft_assets.lib.models import (
    LABELS_FILE, MANIFEST_FILE, MERGED_DIR, METRICS_FILE, TRAIN_INFO_FILE, TRAINING_ERROR_FILE, build_scratch_model,
    load_causal_lm, load_classifier, resolve_base_model, transformer_block_count, weights_sha256,
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
    if precision == "fp16" and device != "cuda":  # its loss scaling is CUDA's
        raise ValueError(f"precision 'fp16' needs a CUDA device; on {device} use 'bf16', 'fp32' or 'auto'")
    return precision


def fit(recipe: RecipeConfig, labels: list[str], train_rows: dict[str, list], validation_rows: dict[str, list] | None,
        *, task: str = "classification", base_model_path: str | None = None, device: str = "auto",
        precision: str = "auto", logger: MetricLogger | None = None, resume_dir: str | None = None) -> FitResult:
    """Trains `recipe` on in-memory rows ({"text": [...], "label": [...]}) and returns the model.

    Under torchrun every process calls this with the same rows; each trains on its slice of every
    global batch (DDP) and only rank 0 logs, validates and returns a model to save.

    Args:
        labels: the classifier's outputs, in order; [] for the causal-LM tasks.
        task: the dataset's task: classification, instruction (text holds chat messages JSON) or
            language_modeling.
        base_model_path: where the base model is, for base_model checkpoint:<recipe>; None resolves
            the recipe's base_model.
        resume_dir: where step states are kept, a local path or s3:// URI (see lib/resume.py); the run
            continues from the newest one there, and None never saves or resumes.

    Raises:
        ValueError: in setup, before any training step, with the fix in the message.
    """
    import torch

    from ft_assets.lib import distributed, resume

    # --- setup ---
    logger = logger or MetricLogger()
    world = distributed.current_world()
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    cfg = recipe.training
    if not train_rows["text"]:
        raise ValueError(f"recipe {recipe.name!r}: the training split is empty")
    quantized = recipe.method == "qlora"
    require_machine(recipe, device, base_model_path)
    distributed.start_process_group(world, device)

    torch.manual_seed(cfg.seed)
    if task == "classification":
        data = _classification_data(recipe, labels, train_rows, validation_rows, base_model_path, device, world)
    else:
        data = _causal_data(recipe, task, train_rows, validation_rows, base_model_path, device, world)
    model = data.model
    set_attention(model, cfg.attention, device, recipe.name)
    if not quantized:  # 4-bit weights are placed on the GPU when loaded and cannot move
        model = model.to(device)
    if cfg.gradient_checkpointing:
        # transformers 5.2x renamed it; older 5.x releases (as on some GPU images) have only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    # A private generator: each epoch's iterator draws a seed from it, and drawing from torch's global one
    # would shift the dropout masks of a resumed run.
    loader = torch.utils.data.DataLoader(data.train_set, batch_sampler=data.batches, collate_fn=data.collate,
                                         pin_memory=device == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    # Biases and LayerNorm weights are not decayed (the usual BERT recipe); a new head has its own rate.
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_head = any(part in data.heads for part in name.split("."))
            groups.setdefault((in_head, p.ndim >= 2), []).append(p)
    params = [p for group in groups.values() for p in group]
    fused = all(p.dtype.is_floating_point for p in params)  # one kernel per step, not one per tensor
    optimizer = torch.optim.AdamW([
        {"params": group, "lr": cfg.head_learning_rate if in_head else recipe.learning_rate,
         "weight_decay": cfg.weight_decay if decayed else 0.0}
        for (in_head, decayed), group in groups.items()
    ], fused=fused)
    accumulation = cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accumulation)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = _schedule(cfg.schedule)(optimizer, int(cfg.warmup_fraction * total_steps), total_steps)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    compiled = compiles(cfg, device)
    if compiled:
        # Text blocks and packed rows have one shape; other batches vary in length: compile for any length.
        compile_blocks(model, dynamic=task != "language_modeling" and not cfg.packing)
    train_model = model
    if world.size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[world.local_rank] if device == "cuda" else None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    step, epoch, batches_done, train_seconds, counts = 0, 1, 0, 0.0, [0, 0]  # counts: examples, tokens
    resumed_from = None
    if resume_dir is not None and (saved := resume.load_latest(resume_dir, world.rank)) is not None:
        state, rng = saved
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batches_done, train_seconds, counts = (state["step"], state["epoch"], state["batches_done"],
                                                            state["train_seconds"], state["counts"])
        logger.records[:] = state["records"]
        resume.restore_rng(rng)
        resumed_from = step
        logger.log_dict({"resumed_from_step": step}, step)

    # --- train ---
    last_train_loss = next((r["train_loss"] for r in reversed(logger.records) if "train_loss" in r), float("nan"))
    for epoch in range(epoch, cfg.epochs + 1):
        model.train()
        data.batches.set_epoch(epoch)
        started = time.perf_counter()
        running, running_n = 0.0, 0
        n_batches = len(loader)
        for i, batch in enumerate(loader):
            if i < batches_done:  # resumed mid-epoch: these batches were trained on before the kill
                continue
            n_tokens = int(batch.pop("n_tokens").sum())  # on the CPU, before the batch moves: no GPU sync
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            # The last step of an epoch may gather fewer batches; each batch's share of the step is equal.
            group_start = i - i % accumulation
            in_group = min(accumulation, n_batches - group_start)
            steps_now = i + 1 == group_start + in_group
            # Gradients are averaged between processes once per optimizer step, not per batch.
            with contextlib.nullcontext() if steps_now or world.size == 1 else train_model.no_sync():
                with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss = data.loss(train_model, batch)
                scaler.scale(loss / in_group).backward()
            counts[0] += batch["input_ids"].shape[0]
            counts[1] += n_tokens
            running += loss.detach().float()  # kept on the device: .item() would wait for the GPU every batch
            running_n += 1
            if not steps_now:
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            if step % cfg.log_every_steps == 0 or step == total_steps:
                examples, tokens, loss_sum, n_losses = distributed.sum_over_processes(
                    counts + [float(running), running_n], world, device)
                elapsed = train_seconds + time.perf_counter() - started  # after float(): the GPU has caught up
                last_train_loss = loss_sum / n_losses  # the mean over every process's batches
                logger.log_dict({"epoch": epoch, "train_loss": last_train_loss,
                                 "learning_rate": recipe.learning_rate * scheduler.get_last_lr()[0]
                                 / optimizer.param_groups[0]["initial_lr"],
                                 "examples_per_sec": examples / elapsed, "tokens_per_sec": tokens / elapsed,
                                 "tokens_seen": int(tokens)}, step)
                running, running_n = 0.0, 0
            if resume_dir is not None and cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < total_steps:
                shared = None if not world.is_main else {
                    "trainable": resume.trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                    "epoch": epoch, "batches_done": i + 1, "counts": counts,
                    "train_seconds": train_seconds + time.perf_counter() - started, "records": logger.records,
                }
                resume.save_step(resume_dir, step, world.rank, shared)
                distributed.barrier(world)
                if world.is_main:
                    resume.mark_complete(resume_dir, step, world.size)
        batches_done = 0
        # Validation is not training time: the throughput figures count training steps only.
        train_seconds += time.perf_counter() - started
        if data.validate is not None and world.is_main:
            logger.log_dict({"epoch": epoch, **data.validate(model)}, step)

    examples, tokens = distributed.sum_over_processes(counts, world, device)
    distributed.end_process_group(world)
    train_info = {
        "status": "success",
        "task": task,
        "device": device,
        "device_name": describe_device(device),
        "precision": precision,
        "processes": world.size,
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "compiled": compiled,
        "fused_optimizer": fused,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "global_batch_size": cfg.batch_size * accumulation * world.size,
        "resumed_from_step": resumed_from,
        "steps": step,
        "epochs": cfg.epochs,
        "train_examples": len(data.train_set),
        "train_seconds": train_seconds,
        "examples_per_sec": examples / train_seconds,
        "tokens_per_sec": tokens / train_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "peak_mem_bytes": _peak_memory_bytes(device),  # of this process; each process holds a replica
        "peak_mem_kind": "cuda_allocated" if device == "cuda" else "process_rss",
        "final_train_loss": last_train_loss,
        "final_eval": next((r for r in reversed(logger.records) if "eval_loss" in r), None),
        **data.info,
    }
    return FitResult(model=model, tokenizer=data.tokenizer, train_info=train_info, logger=logger,
                     base_model_path=data.base_model_path)


def require_machine(recipe: RecipeConfig, device: str, base_model_path: str | None) -> None:
    """What a recipe needs of the machine and of its base model's files, checked before any data is read
    (the YAML was checked from its settings alone, wherever it loaded).

    Raises:
        ValueError: naming the recipe, the field and the way out, as a config error does.
    """
    import importlib.util

    problems = []
    if recipe.method == "qlora":
        lacking = [what for what, there in (("a CUDA GPU", device == "cuda"),
                                            ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes")))
                   if not there]
        if lacking:
            problems.append(("method", f"qlora needs a CUDA GPU and the bitsandbytes package (4-bit weights); "
                                       f"this training run lacks {' and '.join(lacking)} (device {device}). Use "
                                       "lora here, or train where both are"))
    blocks = transformer_block_count(base_model_path) if base_model_path and recipe.method == "freeze" else None
    if blocks and recipe.method_args["layers"] > blocks:
        problems.append(("method_args.layers", f"{recipe.method_args['layers']} but the base model has only "
                                               f"{blocks} transformer blocks"))
    if problems:
        raise ValueError("; ".join(f"recipe {recipe.name!r}: field {field}: {problem}" for field, problem in problems))


def set_attention(model, attention: str, device: str, recipe_name: str) -> None:
    """Switches the model to training.attention ("auto" keeps what the model loaded with).

    Raises:
        ValueError: flex_attention off CUDA, or an architecture that cannot use the kernel asked for.
    """
    if attention == "auto":
        return
    if attention == "flex_attention" and device != "cuda":
        raise ValueError(f"recipe {recipe_name!r}: training.attention flex_attention trains on CUDA only (torch has "
                         f"no {device} backward for it); use sdpa or auto on {device}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    try:
        base.set_attn_implementation(attention)
    except (ValueError, ImportError) as e:
        raise ValueError(f"recipe {recipe_name!r}: training.attention {attention}: {e}") from e
    # transformers only warns when an architecture cannot switch after loading.
    if base.config._attn_implementation != attention:
        raise ValueError(f"recipe {recipe_name!r}: training.attention {attention}: {type(base).__name__} cannot "
                         f"switch its attention (it stays {base.config._attn_implementation}); use auto")


def compiles(cfg, device: str) -> bool:
    """Whether training.compile compiles on `device` (auto: on CUDA only)."""
    return cfg.compile is True or (cfg.compile == "auto" and device == "cuda")


def compile_blocks(model, *, dynamic: bool) -> None:
    """torch.compile each transformer block in place, rather than the whole model.

    The attention mask is then built outside the compiled code: a whole-model compile makes
    transformers (5.x, torch < 2.14) build a dense (B, 1, T, T) mask even for unpadded causal
    batches, which takes SDPA off its is_causal flash path. The blocks share one compiled graph,
    so compiling takes a fraction of a whole-model compile.
    """
    try:
        _, blocks = transformer_blocks(model)
    except ValueError:  # an architecture without a recognised block list: the whole model
        model.compile(dynamic=dynamic)
        return
    for block in blocks:
        block.compile(dynamic=dynamic)


def _schedule(name: str):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    return {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}[name]


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
    batches: Any  # a distributed.GlobalBatchSampler over train_set
    info: dict = field(default_factory=dict)  # task figures for train_info


def _classification_data(recipe, labels, train_rows, validation_rows, base_model_path, device, world) -> _TrainingData:
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
    class_weight, example_weights = _imbalance_handling(cfg.imbalance, train_set["labels"], len(labels))
    if class_weight is not None:
        class_weight = class_weight.to(device)
    batches = _batches(cfg, [len(ids) for ids in train_set["input_ids"]], world, weights=example_weights,
                       group_by_length=cfg.group_by_length)
    # Multiples of 8 keep tensor-core shapes on GPUs; the few extra pad tokens carry no loss.
    pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if device == "cuda" else None)

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
                         validate=validate, heads=set(head_modules(model)), base_model_path=base_path, batches=batches)


def _causal_data(recipe, task, train_rows, validation_rows, base_model_path, device, world) -> _TrainingData:
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

    # Packed rows are nearly full: for a compiled model they are padded to max_length, which costs a few
    # pad tokens and gives every batch one shape (no dynamic shapes to compile for).
    width = cfg.max_length if cfg.packing and compiles(cfg, device) else None

    def collate(rows):
        batch = collate_causal(rows, tokenizer.pad_token_id, width=width)
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
                         validate=validate, heads=set(), base_model_path=base_path, info=info,
                         batches=_batches(cfg, [len(row["input_ids"]) for row in train_set], world,
                                          group_by_length=cfg.group_by_length and not cfg.packing))


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


def _imbalance_handling(imbalance: str, label_ids: list[int], n_labels: int):
    """(class weights for the loss, per-example sampling weights); None where the setting uses neither."""
    import numpy as np
    import torch

    counts = np.bincount(label_ids, minlength=n_labels).astype(np.float64)
    if imbalance == "class_weights":
        # sklearn's "balanced": n / (k * n_class); a class absent from train gets weight 0.
        weights = np.divide(len(label_ids), n_labels * counts, out=np.zeros_like(counts), where=counts > 0)
        return torch.tensor(weights, dtype=torch.float32), None
    if imbalance == "balanced_sampler":
        return None, [1.0 / counts[i] for i in label_ids]
    return None, None


def _batches(cfg, lengths: list[int], world, *, group_by_length: bool, weights: list[float] | None = None):
    """Each epoch's batches for this process: drawn by weight, grouped by length, or shuffled."""
    from ft_assets.lib.distributed import GlobalBatchSampler, epoch_order

    kind = "weighted" if weights is not None else "length_grouped" if group_by_length else "shuffle"
    order = epoch_order(kind, len(lengths), cfg.seed, batch_size=cfg.batch_size * world.size, lengths=lengths,
                        weights=weights)
    return GlobalBatchSampler(order, len(lengths), cfg.batch_size, world)


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
    import fsspec

    with fsspec.open(path, "rb") as f:  # a local path, or s3:// when the run is in a pod
        table = pq.read_table(f, columns=["text", "label"])
    return {"text": table.column("text").to_pylist(), "label": table.column("label").to_pylist()}


def run(spec: dict, logger: MetricLogger) -> dict | None:
    """Setup → train → save, from a spec dict; returns the manifest (None on ranks other than 0,
    which train but do not save)."""
    from ft_assets.lib.distributed import current_world
    from ft_assets.lib.resume import remove, resume_key

    recipe = RecipeConfig.model_validate(spec["recipe"])
    task, base_path = spec.get("task", "classification"), spec.get("base_model_path")
    if base_path is not None and base_path.startswith("s3://"):  # in a pod: the base checkpoint's copy
        base_path = resolve_base_model(base_path)
    own_base = recipe.base_model != SCRATCH and recipe.base_recipe is None  # else no files, or the spec names them
    require_machine(recipe, resolve_device(spec.get("device", "auto")),
                    base_path or (resolve_base_model(recipe.base_model) if own_base else None))
    train_rows, validation_rows = _read_rows(spec["train_path"]), _read_rows(spec.get("validation_path"))
    world = current_world()
    resume_dir = None
    if spec.get("resume_dir"):
        # A rerun of the same training continues; different data, settings or process count start afresh.
        key = resume_key(recipe.recipe_hash(), task, base_path, spec["labels"], train_rows, validation_rows,
                         world.size, spec.get("device", "auto"), spec.get("precision", "auto"))
        resume_dir = posixpath.join(spec["resume_dir"], key)
    result = fit(recipe, spec["labels"], train_rows, validation_rows, task=task, base_model_path=base_path,
                 device=spec.get("device", "auto"), precision=spec.get("precision", "auto"), logger=logger,
                 resume_dir=resume_dir)
    if not world.is_main:
        return None
    output_dir = Path(spec["output_dir"])
    manifest = save_checkpoint(result, recipe, spec["labels"], output_dir, spec.get("lineage", {}))
    if spec.get("publish_uri"):
        from ft_assets.lib.storage import publish_directory

        publish_directory(output_dir, spec["publish_uri"], last=MANIFEST_FILE)
    if resume_dir is not None:
        remove(spec["resume_dir"])  # the checkpoint is saved: nothing to resume
    return manifest


def main(argv: list[str] | None = None) -> None:
    import argparse

    import fsspec
    from dagster_pipes import PipesEnvVarParamsLoader

    parser = argparse.ArgumentParser(prog="python -m ft_assets.lib.train", description="Trains from SPEC.json.")
    parser.add_argument("--processes", type=int, default=1,
                        help="above 1: this process becomes torchrun --standalone over that many processes (DDP)")
    parser.add_argument("spec", help="SPEC.json, a local path or s3:// URI")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # Started by a Dagster step, or a torchrun worker; run by hand (under nohup, say) it may outlive its shell.
    if PipesEnvVarParamsLoader().is_dagster_pipes_process() or "LOCAL_RANK" in os.environ:
        _stop_with_parent()
    with fsspec.open(args.spec, "r") as f:  # s3:// when the run is in a pod
        spec = json.load(f)
    try:
        if args.processes > 1:
            from ft_assets.lib.distributed import require_a_gpu_each

            require_a_gpu_each(args.processes, spec.get("device", "auto"))
            # torchrun takes this process over: the same pid, so Dagster's SIGINT on termination reaches
            # it, and the parent-death signal set above stays with it.
            os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      f"--nproc-per-node={args.processes}", "-m", "ft_assets.lib.train", args.spec])
        _train_from_spec(spec)
    except Exception as e:
        # The orchestrator sees only an exit code: leave it the reason, beside the spec.
        from ft_assets.lib.distributed import current_world

        world = current_world()
        where = f" (process {world.rank} of {world.size})" if world.size > 1 else ""
        with fsspec.open(training_error_path(args.spec), "w") as f:
            f.write(f"{type(e).__name__}{where}: {e}")
        raise


def _stop_with_parent() -> None:
    """On Linux, SIGTERM this process when the process that started it dies.

    A Dagster step (or torchrun) killed with SIGKILL, by the OOM killer say, would otherwise leave
    its training processes running for a run that is over, holding the device; their resume states
    stay for the rerun. (The signal follows the parent's thread: Dagster's Pipes client waits for
    the process in the thread that started it, as torchrun does for its workers.)
    """
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def training_error_path(spec_path: str) -> str:
    """Where a failed training leaves its reason: beside its spec, a local path or an s3:// URI."""
    return posixpath.join(posixpath.dirname(spec_path) or ".", TRAINING_ERROR_FILE)


def _train_from_spec(spec: dict) -> None:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    from ft_assets.lib.distributed import current_world

    if not current_world().is_main:  # only rank 0 talks to Dagster: one log, one materialization
        run(spec, MetricLogger())
        return
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
            "processes": {"raw_value": info["processes"], "type": "int"},
            "resumed_from_step": {"raw_value": info["resumed_from_step"] or 0, "type": "int"},
            "device": {"raw_value": f"{info['device']} ({info['device_name']}, {info['precision']})", "type": "text"},
        })


if __name__ == "__main__":
    main()
