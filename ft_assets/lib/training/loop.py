"""The training loop: fit() reads top to bottom, setup (task, model, optimizer, resume), the steps, the result.

The task builds the model, the examples and the loss (classification.setup, causal.setup); the loop is
the same for every task, method and device: bf16 autocast, fused AdamW, gradient accumulation and
clipping, warmup then a schedule, compiled blocks on CUDA, DDP under torchrun, step states for resume.
Writing the checkpoint is checkpoint.py's; the process around a run (spec, Pipes, torchrun) __main__.py's.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ft_assets.lib.config import RecipeConfig
from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.training.base_models import transformer_block_count
from ft_assets.lib.training.device import (
    compiles, describe_device, peak_memory_bytes, resolve_device, resolve_precision,
)
from ft_assets.lib.training.methods import count_parameters, transformer_blocks
from ft_assets.lib.training.selection import BestTracker


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
    # With keep best and keep_last: the last step's trainable weights, when the model holds the best step's.
    last_state: dict | None = None


def fit(recipe: RecipeConfig, labels: list[str], train_rows: dict[str, list], validation_rows: dict[str, list] | None,
        *, task: str = "classification", base_model_path: str | None = None, device: str = "auto",
        precision: str = "auto", logger: MetricLogger | None = None, resume_dir: str | None = None,
        reference_cache: str | None = None) -> FitResult:
    """Trains `recipe` on in-memory rows ({"text": [...], "label": [...]}) and returns the model.

    Under torchrun every process calls this with the same rows; each trains on its slice of every
    global batch (DDP) and only rank 0 logs, validates and returns a model to save.

    Args:
        labels: the classifier's outputs, in order; [] for the causal-LM tasks.
        task: the dataset's task: classification, instruction (text holds chat messages JSON),
            language_modeling or preference (text holds a pair's JSON, see lib/training/preference.py).
        base_model_path: where the base model is, for base_model checkpoint:<recipe>; None resolves
            the recipe's base_model.
        resume_dir: where step states are kept, a local path or s3:// URI (see lib/training/resume.py); the run
            continues from the newest one there, and None never saves or resumes.
        reference_cache: a folder for the reference log-probs of `precompute_reference` (preference); None
            scores them in every run.

    Raises:
        ValueError: in setup, before any training step, with the fix in the message; when the training
            diverges (a NaN or infinite train loss), or no validation evaluation is finite: nothing to publish.
    """
    import torch

    from ft_assets.lib.training import causal, classification, distributed, preference, resume

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
        data = classification.setup(recipe, labels, train_rows, validation_rows, base_model_path, device, world)
    elif task == "preference":
        data = preference.setup(recipe, train_rows, validation_rows, base_model_path, device, world,
                                reference_cache=reference_cache)
    else:
        data = causal.setup(recipe, task, train_rows, validation_rows, base_model_path, device, world)
    model = _placed(data.model, recipe, device, quantized)
    keep = cfg.keep or ("best" if data.validate is not None else "last")
    if data.validate is None and (asked := cfg.settings_needing_validation()):
        raise ValueError(f"recipe {recipe.name!r}: field training.{asked[0]}: needs validation examples, and "
                         "the validation split is empty; raise the dataset's validation_fraction")
    # The best validation evaluation so far, and its trainable weights (on the CPU, off the accelerator).
    tracker = BestTracker.for_task(task, cfg.early_stopping) if data.validate is not None else None
    best_state = None
    trainable, total = count_parameters(model)
    # A private generator: each epoch's iterator draws a seed from it, and drawing from torch's global one
    # would shift the dropout masks of a resumed run.
    loader = torch.utils.data.DataLoader(data.train_set, batch_sampler=data.batches, collate_fn=data.collate,
                                         pin_memory=device == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    optimizer, params, fused = _adamw(model, data.heads, recipe)
    accumulation = cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accumulation)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = _schedule(cfg.schedule, optimizer, int(cfg.warmup_fraction * total_steps), total_steps)
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
        if tracker is not None and state.get("selection") is not None:
            tracker = BestTracker.from_state(state["selection"])
            # Saved only where the best is not the step saved, whose weights were just loaded.
            best_state = state["best_trainable"] or (resume.trainable_state(model, "cpu") if tracker.best_step == step else None)
        resume.restore_rng(rng)
        resumed_from = step
        logger.log_dict({"resumed_from_step": step}, step)

    def evaluate() -> bool:
        """Validates (rank 0 only), logs it, keeps the weights if they are the best so far; whether to stop
        early, the same answer on every process."""
        nonlocal best_state
        stop = 0.0
        if world.is_main:
            record = data.validate(model)
            logger.log_dict({"epoch": epoch, **record}, step)
            if tracker.update(record, step) and keep == "best":
                best_state = resume.trainable_state(model, "cpu")
            stop = float(tracker.stopped_early)
        model.train()
        stopping = distributed.sum_over_processes([stop], world, device)[0] > 0
        tracker.stopped_early = stopping
        return stopping

    # --- train ---
    last_train_loss = next((r["train_loss"] for r in reversed(logger.records) if "train_loss" in r), float("nan"))
    stop = False
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
            # Examples, not rows: a preference batch holds each pair's two answers.
            n_examples = int(batch.pop("n_examples")) if "n_examples" in batch else batch["input_ids"].shape[0]
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
            counts[0] += n_examples
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
                if not math.isfinite(last_train_loss):
                    raise ValueError(
                        f"recipe {recipe.name!r}: training diverged: the mean train loss up to step {step} (epoch "
                        f"{epoch}) is {last_train_loss}, so nothing is saved. Lower training.learning_rate "
                        f"({recipe.learning_rate:g}) or training.max_grad_norm ({cfg.max_grad_norm:g})"
                        + (", or train in bf16 or fp32 (precision fp16 overflows)" if precision == "fp16" else ""))
            if tracker is not None and cfg.eval_every_steps and (step % cfg.eval_every_steps == 0
                                                                 or step == total_steps):
                paused = time.perf_counter()
                stop = evaluate()
                started += time.perf_counter() - paused  # validation is not training time
            if resume_dir is not None and cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < total_steps:
                shared = None if not world.is_main else {
                    "trainable": resume.trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                    "epoch": epoch, "batches_done": i + 1, "counts": counts,
                    "train_seconds": train_seconds + time.perf_counter() - started, "records": logger.records,
                    "selection": tracker.state() if tracker is not None else None,
                    "best_trainable": best_state if tracker is not None and tracker.best_step != step else None,
                }
                resume.save_step(resume_dir, step, world.rank, shared)
                distributed.barrier(world)
                if world.is_main:
                    resume.mark_complete(resume_dir, step, world.size)
            if stop:
                break
        batches_done = 0
        # Validation is not training time: the throughput figures count training steps only.
        train_seconds += time.perf_counter() - started
        if tracker is not None and not cfg.eval_every_steps:
            stop = evaluate()
        if stop:
            break

    last_state = None
    if keep == "best" and world.is_main:
        if tracker.best_step is None:
            raise ValueError(f"recipe {recipe.name!r}: no validation evaluation was finite (each had a NaN or "
                             "infinite loss or metric), so no step's weights can be published; nothing is saved")
        if tracker.best_step != step:
            last_state = resume.trainable_state(model, "cpu") if cfg.keep_last else None
            model.load_state_dict(best_state, strict=False)

    examples, tokens = distributed.sum_over_processes(counts, world, device)
    distributed.end_process_group(world)
    cost = TrainingCost(
        trainable_params=trainable, total_params=total, train_seconds=train_seconds,
        examples_per_sec=examples / train_seconds, tokens_per_sec=tokens / train_seconds,
        peak_mem_bytes=peak_memory_bytes(device),
        peak_mem_kind="cuda_allocated" if device == "cuda" else "process_rss",
        device=device, device_name=describe_device(device),
    )
    train_info = {
        "status": "success",
        "task": task,
        **cost.model_dump(exclude_none=True),
        "precision": precision,
        "processes": world.size,
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "compiled": compiled,
        "fused_optimizer": fused,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "global_batch_size": cfg.batch_size * accumulation * world.size,
        "resumed_from_step": resumed_from,
        "steps": step,
        "steps_run": step,
        "steps_planned": total_steps,
        "stopped_early": bool(tracker is not None and tracker.stopped_early),
        # What early stopping watched (training.early_stopping.monitor); None without early stopping.
        "early_stopping_monitor": tracker.monitor if tracker is not None and tracker.patience is not None else None,
        "keep": keep,
        # The weights the checkpoint holds are those of this step.
        "published_step": tracker.best_step if keep == "best" and tracker is not None else step,
        "selection_metric": tracker.metric if tracker is not None else None,
        "best_step": tracker.best_step if tracker is not None else None,
        "best_metric": tracker.best_value if tracker is not None else None,
        "best_eval": tracker.best_eval if tracker is not None else None,
        "last_saved": last_state is not None,
        "epochs": cfg.epochs,
        "train_examples": len(data.train_set),
        "final_train_loss": last_train_loss,
        "final_eval": next((r for r in reversed(logger.records) if "eval_loss" in r), None),
        **data.info,
    }
    # Only the main process validates, so only its figures name a best step (and only it saves).
    published = train_info["published_step"] or step
    train_info["train_loss_at_published_step"] = next(
        (r["train_loss"] for r in reversed(logger.records) if "train_loss" in r and r["step"] <= published), None)
    return FitResult(model=model, tokenizer=data.tokenizer, train_info=train_info, logger=logger,
                     base_model_path=data.base_model_path, last_state=last_state)



def _placed(model, recipe: RecipeConfig, device: str, quantized: bool):
    """The model with the recipe's attention kernel, on the device, with activation checkpointing if asked."""
    cfg = recipe.training
    set_attention(model, cfg.attention, device, recipe.name)
    if not quantized:  # 4-bit weights are placed on the GPU when loaded and cannot move
        model = model.to(device)
    if cfg.gradient_checkpointing:
        # transformers 5.2x renamed it; older 5.x releases (as on some GPU images) have only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _adamw(model, heads: set[str], recipe: RecipeConfig):
    """(AdamW over the trainable parameters, those parameters, whether it is fused).

    Biases and LayerNorm weights are not decayed (the usual BERT recipe); a new head has its own rate.
    """
    import torch

    cfg = recipe.training
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            in_head = any(part in heads for part in name.split("."))
            groups.setdefault((in_head, p.ndim >= 2), []).append(p)
    params = [p for group in groups.values() for p in group]
    fused = all(p.dtype.is_floating_point for p in params)  # one kernel per step, not one per tensor
    optimizer = torch.optim.AdamW([
        {"params": group, "lr": cfg.head_learning_rate if in_head else recipe.learning_rate,
         "weight_decay": cfg.weight_decay if decayed else 0.0}
        for (in_head, decayed), group in groups.items()
    ], fused=fused)
    return optimizer, params, fused


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


def _schedule(name: str, optimizer, warmup_steps: int, total_steps: int):
    """The learning rate's factor: linear warmup from 0, then a linear or cosine decay to 0 at total_steps.

    The formulas of transformers' get_{linear,cosine}_schedule_with_warmup, to the last bit. They are written
    here because importing transformers.optimization also imports peft and, where it is installed,
    bitsandbytes and torch's compiler: seconds at the start of every training process.
    """
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if name == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return LambdaLR(optimizer, factor)
