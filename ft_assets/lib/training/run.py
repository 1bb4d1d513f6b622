"""One training run from its spec: check the machine, read the splits, fit, save, publish."""

from __future__ import annotations

import posixpath
from pathlib import Path

from ft_assets.lib.config import SCRATCH
from ft_assets.lib.training.base_models import resolve_base_model
from ft_assets.lib.training.checkpoint import MANIFEST_FILE, save_checkpoint
from ft_assets.lib.training.device import resolve_device
from ft_assets.lib.training.loop import MetricLogger, fit, require_machine
from ft_assets.lib.training.spec import TrainingSpec


def run(spec: TrainingSpec, logger: MetricLogger) -> dict | None:
    """Setup → train → save; returns the manifest (None on ranks other than 0, which train but do not save)."""
    from ft_assets.lib.training.distributed import current_world
    from ft_assets.lib.training.resume import remove, resume_key

    recipe, base_path = spec.recipe, spec.base_model_path
    if base_path is not None and base_path.startswith("s3://"):  # in a pod: the base checkpoint's copy
        base_path = resolve_base_model(base_path)
    own_base = recipe.base_model != SCRATCH and recipe.base_recipe is None  # else no files, or the spec names them
    require_machine(recipe, resolve_device(spec.device),
                    base_path or (resolve_base_model(recipe.base_model) if own_base else None))
    train_rows, validation_rows = read_rows(spec.train_path), read_rows(spec.validation_path)
    world = current_world()
    resume_dir = None
    if spec.resume_dir:
        # A rerun of the same training continues; different data, settings or process count start afresh.
        key = resume_key(recipe.recipe_hash(), spec.task, base_path, spec.labels, train_rows, validation_rows,
                         world.size, spec.device, spec.precision)
        resume_dir = posixpath.join(spec.resume_dir, key)
    result = fit(recipe, spec.labels, train_rows, validation_rows, task=spec.task, base_model_path=base_path,
                 device=spec.device, precision=spec.precision, logger=logger, resume_dir=resume_dir,
                 reference_cache=spec.reference_cache_dir)
    if not world.is_main:
        return None
    output_dir = Path(spec.output_dir)
    manifest = save_checkpoint(result, recipe, spec.labels, output_dir, spec.lineage)
    if spec.publish_uri:
        from ft_assets.lib.storage import publish_directory

        publish_directory(output_dir, spec.publish_uri, last=MANIFEST_FILE)
    if resume_dir is not None:
        remove(spec.resume_dir)  # the checkpoint is saved: nothing to resume
    return manifest


def read_rows(path: str | None) -> dict[str, list] | None:
    """A split's parquet as {"text": [...], "label": [...]}; a local path, or s3:// when the run is in a pod."""
    if path is None:
        return None
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        table = pq.read_table(f, columns=["text", "label"])
    return {"text": table.column("text").to_pylist(), "label": table.column("label").to_pylist()}
