"""Which step's weights a run publishes, and when it stops: the best validation evaluation and early stopping.

Every evaluation is scored by its task's validation metric (SELECTION_METRIC). An evaluation is the new best
when its metric beats the best so far; on an equal metric (small validation splits make accuracies tie), a
lower eval_loss wins. An evaluation with a NaN or infinite metric or loss is never best. Early stopping
counts the evaluations since the monitored figure (the metric, or with `monitor: loss` the eval_loss) last
improved by more than `min_delta` and stops after `patience` of them; it never changes which step is best.
The tracker's state is plain values, so it lives in the step state and survives a kill and resume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Per task: (the validation figure that picks the best step, whether higher is better).
SELECTION_METRIC = {
    "classification": ("eval_accuracy", True),
    "preference": ("eval_preference_accuracy", True),
    "instruction": ("eval_loss", False),  # the loss on the answer tokens
    "language_modeling": ("eval_loss", False),  # perplexity is its exponential: the same order
}


@dataclass
class BestTracker:
    metric: str
    higher_is_better: bool
    patience: int | None = None  # None: never stops early
    min_delta: float = 0.0
    monitor: str = "metric"  # or "loss": what early stopping watches
    best_step: int | None = None
    best_value: float | None = None
    best_loss: float | None = None
    best_eval: dict | None = None
    # Early stopping's reference: the value last beaten by more than min_delta, and the evaluations since.
    reference_value: float | None = None
    stale: int = 0
    stopped_early: bool = False

    @classmethod
    def for_task(cls, task: str, early_stopping=None) -> BestTracker:
        metric, higher = SELECTION_METRIC[task]
        return cls(metric=metric, higher_is_better=higher,
                   patience=early_stopping.patience if early_stopping else None,
                   min_delta=early_stopping.min_delta if early_stopping else 0.0,
                   monitor=early_stopping.monitor if early_stopping else "metric")

    def update(self, record: dict, step: int) -> bool:
        """Takes one evaluation's record (the validate() figures); whether it is the new best."""
        value, loss = record.get(self.metric), record.get("eval_loss")
        finite = value is not None and math.isfinite(value) and (loss is None or math.isfinite(loss))
        sign = 1.0 if self.higher_is_better else -1.0
        is_best = finite and (
            self.best_value is None or sign * (value - self.best_value) > 0
            or (value == self.best_value and loss is not None and self.best_loss is not None and loss < self.best_loss))
        if is_best:
            self.best_step, self.best_value, self.best_loss = step, value, loss
            self.best_eval = {k: v for k, v in record.items() if k != "epoch"}
        watched, watched_sign = (loss, -1.0) if self.monitor == "loss" else (value, sign)
        if finite and watched is not None and (
                self.reference_value is None or watched_sign * (watched - self.reference_value) > self.min_delta):
            self.reference_value, self.stale = watched, 0
        else:
            self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            self.stopped_early = True
        return is_best

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> BestTracker:
        return cls(**state)


def best_candidate(task: str, evaluations: list[dict | None]) -> int | None:
    """Which of several runs' validation figures (their published weights' evaluation; None for a run without
    one) is best, by the rule that picks a run's best step: its index, or None when none is finite."""
    tracker = BestTracker.for_task(task)
    for index, record in enumerate(evaluations):
        if record is not None:
            tracker.update(record, index)
    return tracker.best_step
