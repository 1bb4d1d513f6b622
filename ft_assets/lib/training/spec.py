"""SPEC.json: one training run, as the checkpoint asset writes it (or a person, by hand) and the trainer reads it."""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ft_assets.lib.config import Device, Precision, RecipeConfig

# Written beside a training spec when training fails: the reason, for the asset's error.
TRAINING_ERROR_FILE = "training_error.txt"


class TrainingSpec(BaseModel):
    """Every path may be local or s3:// (a training pod reads and writes the bucket)."""

    model_config = ConfigDict(extra="forbid")

    recipe: RecipeConfig  # as in the project YAML, validated again here
    task: Literal["classification", "instruction", "language_modeling", "preference"] = "classification"
    labels: list[str] = []  # the classifier's outputs, in order ([] for causal LMs)
    base_model_path: str | None = None  # the base's folder when base_model is checkpoint:<recipe>
    train_path: str  # parquet with columns text, label
    validation_path: str | None = None
    output_dir: str  # where the checkpoint appears; must not exist yet
    publish_uri: str | None = None  # an s3:// prefix the finished checkpoint is copied to, manifest last
    resume_dir: str | None = None  # where step states are kept, so that a killed run resumes (resume.py)
    # where precompute_reference keeps the reference's log-probs of a preference recipe's pairs
    reference_cache_dir: str | None = None
    device: Device = "auto"
    precision: Precision = "auto"
    lineage: dict[str, Any] = {}  # anything to record in manifest.json (raw files, dataset version, run id)

    @classmethod
    def read(cls, uri: str) -> TrainingSpec:
        import fsspec

        with fsspec.open(uri, "r") as f:
            return cls.model_validate_json(f.read())

    def write(self, uri: str) -> None:
        import fsspec

        with fsspec.open(uri, "w") as f:
            f.write(self.model_dump_json(indent=2))


def training_error_path(spec_uri: str) -> str:
    """Where a failed training leaves its reason: beside its spec, a local path or an s3:// URI."""
    return posixpath.join(posixpath.dirname(spec_uri) or ".", TRAINING_ERROR_FILE)
