"""What the loop needs from a task (classification.setup, causal.setup), and the order of its batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class TrainingData:
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


def batch_sampler(cfg, lengths: list[int], world, *, group_by_length: bool, weights: list[float] | None = None):
    """Each epoch's batches for this process: drawn by weight, grouped by length, or shuffled."""
    from ft_assets.lib.training.distributed import GlobalBatchSampler, epoch_order

    kind = "weighted" if weights is not None else "length_grouped" if group_by_length else "shuffle"
    order = epoch_order(kind, len(lengths), cfg.seed, batch_size=cfg.batch_size * world.size, lengths=lengths,
                        weights=weights)
    return GlobalBatchSampler(order, len(lengths), cfg.batch_size, world)
