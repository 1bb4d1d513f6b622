"""What a tuned checkpoint cost to train, in one vocabulary: the training loop writes it into
train_info.json, and the report (eval.json's `cost`), the leaderboard, report.md, the CLI summary and
the Dagster metadata all read these names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class TrainingCost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trainable_params: int
    total_params: int
    train_seconds: float  # the training steps' wall time, summed over resumed runs; validation excluded
    examples_per_sec: float
    tokens_per_sec: float  # tokens the model read, padding excluded
    peak_mem_bytes: int  # of one process: each holds a replica
    peak_mem_kind: Literal["cuda_allocated", "process_rss"]
    device: str
    device_name: str
    checkpoint_bytes: int | None = None  # the checkpoint folder's size, known once it is written

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params

    @classmethod
    def from_train_info(cls, train_info: dict) -> TrainingCost:
        return cls.model_validate({name: train_info[name] for name in cls.model_fields if name in train_info})
