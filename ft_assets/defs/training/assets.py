"""checkpoints/<recipe>: one fine-tuning run, in its own process through Dagster Pipes."""


import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from ft_assets.defs.automation import retraining
from ft_assets.defs.datasets.snapshots import recorded_snapshot
from ft_assets.defs.resources import GPU_POOL, GpuResource, asset_key, latest_metadata, project_resource, resource_keys
from ft_assets.defs.training.launcher import TrainingLauncher
from ft_assets.lib.config import ProjectConfig, RecipeConfig
from ft_assets.lib.lineage import code_version, git_state
from ft_assets.lib.storage import publish, remove_partials
from ft_assets.lib.training.checkpoint import MANIFEST_FILE, MERGED_DIR
from ft_assets.lib.training.model_cache import local_copy
from ft_assets.lib.training.spec import TrainingSpec, training_error_path

PROJECT_DIR = Path(__file__).resolve().parents[3]
# Step states of an interrupted run, under the recipe's folder; removed once a checkpoint is saved.
RESUME_DIR = ".resume"
# precompute_reference's log-probs, by the pairs and the reference weights (lib/training/preference.py).
REFERENCE_CACHE_DIR = "cache/reference_logps"


def build_checkpoint_asset(recipe: RecipeConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    dataset = config.dataset(recipe.dataset)
    dataset_key = asset_key(config, "datasets", dataset.name)
    recipe_dir = config.root / "checkpoints" / recipe.name
    # base_model checkpoint:<recipe> makes that recipe's checkpoint an upstream asset.
    base_key = asset_key(config, "checkpoints", recipe.base_recipe) if recipe.base_recipe else None
    base = f"the latest checkpoints/{recipe.base_recipe}" if base_key else f"`{recipe.base_model}`"

    @dg.asset(
        key=asset_key(config, "checkpoints", recipe.name),
        group_name="training",
        kinds={"pytorch"},
        pool=GPU_POOL,
        deps=[dataset_key] + ([base_key] if base_key else []),
        code_version=code_version(recipe.recipe_hash(), "ft_assets.lib.training.__main__"),
        automation_condition=None if recipe.retrain == "manual" else retraining(recipe.retrain),
        description=(
            f"`{recipe.method}` {'training' if recipe.scratch else 'fine-tuning'} of {base} on the snapshot of "
            f"datasets/{dataset.name} that Dagster recorded last ({dataset.task.replace('_', ' ')}, "
            f"{recipe.training.epochs} epochs, lr {recipe.learning_rate:g}, batch {recipe.training.batch_size}). "
            f"Writes a save_pretrained directory under `{recipe_dir}/<version>/` with manifest.json: raw files "
            "and their sha256, dataset version, recipe hash, the base model's sha256, library versions, git SHA, run id."
        ),
        metadata={"recipe": dg.MetadataValue.json(recipe.model_dump(mode="json"))},
        required_resource_keys=resource_keys(config, "gpu", "launcher"),
    )
    def checkpoint(context: dg.AssetExecutionContext):
        for partial in remove_partials(recipe_dir):
            context.log.warning(f"removed {partial}, left by an interrupted run")
        version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
        output_dir = recipe_dir / version
        # The rows and the version recorded together, from the snapshot Dagster's record names: never the
        # warehouse, which a run killed after its commit leaves ahead of that record.
        data = recorded_snapshot(context, dataset_key)
        if data.rows("train") == 0:
            raise dg.Failure(description=f"checkpoints/{recipe.name}: datasets/{dataset.name} version "
                                         f"{data.version[:16]} has no train rows; add data and materialize it again")
        trained = train_checkpoint(context, config, recipe, data, output_dir, recipe_dir / RESUME_DIR, base_key)
        return dg.MaterializeResult(
            metadata={
                **trained.metadata,
                "checkpoint_path": dg.MetadataValue.path(str(output_dir)),
                "version": version,
                "recipe_hash": trained.manifest["recipe_hash"],
                "manifest": dg.MetadataValue.json(trained.manifest),
            },
            data_version=dg.DataVersion(version),
        )

    return checkpoint


@dataclass
class TrainedCheckpoint:
    manifest: dict
    metadata: dict  # what the training process reported through Pipes, and where the checkpoint was published


def train_checkpoint(context: dg.AssetExecutionContext, config: ProjectConfig, recipe: RecipeConfig, data,
                     output_dir: Path, resume_dir: Path, base_key: dg.AssetKey | None,
                     train_path: str | None = None) -> TrainedCheckpoint:
    """Trains `recipe` on the snapshot `data` (or on the train rows at `train_path`) into `output_dir`, in its
    own process (here or in a pod, as the launcher resource says), and publishes it.

    Raises:
        dg.Failure: training failed; nothing was registered, and the reason the process left is in the message.
    """
    dataset = config.dataset(recipe.dataset)
    gpu: GpuResource = project_resource(context, config, "gpu")
    launcher: TrainingLauncher = project_resource(context, config, "launcher")
    kube = launcher.require_kubernetes(config)
    what = context.asset_key.to_user_string()
    base_model_path = _base_checkpoint_path(context, base_key, in_pod=kube is not None) if base_key else None
    # A pod reads the snapshot's s3:// copy; a local process, the folder.
    split_location = data.split_uri if kube else (lambda split: str(data.split_path(split)))
    with tempfile.TemporaryDirectory(prefix=f"ft_assets_{recipe.name}_") as tmp:
        spec = TrainingSpec(
            recipe=recipe,
            task=dataset.task,
            labels=data.record["labels"],
            base_model_path=base_model_path,
            train_path=train_path or split_location("train"),
            validation_path=split_location("validation") if data.rows("validation") else None,
            output_dir=str(output_dir),
            resume_dir=str(resume_dir),
            # A pod's disk goes with the pod: there precompute_reference scores the pairs in every run.
            reference_cache_dir=None if kube else str(config.root / REFERENCE_CACHE_DIR),
            device=gpu.device,
            precision=gpu.precision,
            lineage={
                "dataset": {
                    "name": dataset.name,
                    "version": data.version,
                    "config_hash": data.record["config_hash"],
                    "rows": data.record["rows"],
                    "snapshot": {"path": str(data.folder), "uri": data.uri},
                    "raw_files": data.record["raw_files"],
                },
                "code": {"git": git_state(PROJECT_DIR), "config_file": str(config.source)},
                "dagster": {"run_id": context.run_id, "asset_key": what,
                            **({"partition": context.partition_key} if context.has_partition_key else {})},
            },
        )
        spec_path = Path(tmp) / "spec.json"
        spec.write(str(spec_path))
        context.log.info(f"training {recipe.name} ({recipe.method}) on "
                         f"{'a subset of ' if train_path else ''}{data.rows('train')} rows of "
                         f"datasets/{dataset.name} version {data.version[:16]} into {output_dir}"
                         + (f" in a pod with {gpu.processes} GPU(s)" if kube else ""))
        spec_location = _stage_for_pod(config, context, spec, output_dir) if kube else str(spec_path)
        error_file = training_error_path(spec_location)
        try:
            invocation = launcher.train(context, gpu, spec_location, kube)
        except Exception as e:
            reason = _read_text(error_file) or f"the process ended without one: {e}"
            raise dg.Failure(description=f"{what}: training failed and nothing was "
                                         f"registered (no folder at {output_dir}). Reason: {reason}") from e
    reported = invocation.get_materialize_result()
    if kube is not None:  # the pod published it, manifest last
        published = {"published_uri": config.remote_uri(output_dir)}
        manifest_text = _read_text(f"{published['published_uri']}/{MANIFEST_FILE}")
        if manifest_text is None:
            raise dg.Failure(description=f"{what}: the training pod ended without "
                                         f"publishing {published['published_uri']}/{MANIFEST_FILE}, so nothing "
                                         f"was registered. Reason: {_read_text(error_file) or 'none left'}")
        manifest = json.loads(manifest_text)
    else:
        manifest = json.loads((output_dir / MANIFEST_FILE).read_text())
        # Manifest last: on S3 a checkpoint is complete once its manifest is there.
        published = publish(config, output_dir, last=MANIFEST_FILE)
    return TrainedCheckpoint(manifest=manifest, metadata={**(reported.metadata or {}), **published})


def _base_checkpoint_path(context: dg.AssetExecutionContext, base_key: dg.AssetKey, in_pod: bool = False) -> str:
    """The model directory of the base recipe's latest checkpoint (its merged/ export for an adapter);
    for a training pod, its s3:// copy."""
    meta = latest_metadata(context.instance, base_key)
    path = meta.get("checkpoint_path")
    if path is None:
        raise dg.Failure(description=f"{context.asset_key.to_user_string()} starts from "
                                     f"{base_key.to_user_string()}, which has no materialization yet")
    if in_pod:
        manifest = meta.get("manifest") or {}
        merged = manifest.get("recipe", {}).get("export") == "merged"
        return meta["published_uri"] + (f"/{MERGED_DIR}" if merged else "")
    path = local_copy(path, meta.get("published_uri"))
    merged = Path(path) / MERGED_DIR
    return str(merged if merged.is_dir() else Path(path))


def _stage_for_pod(config: ProjectConfig, context: dg.AssetExecutionContext, spec: TrainingSpec,
                   output_dir: Path) -> str:
    """Writes the spec under <root>/runs/<run id>/<recipe>/ for a pod; the spec's URI.

    The pod reads its splits from the dataset snapshot's s3:// copy (the spec names it), writes the
    checkpoint on its own disk and publishes it where a local run would (publish_uri). Its step
    states go to the bucket, where a local run keeps them on disk: a pod's disk is gone with the
    pod, and the rerun's pod resumes from them.
    """
    stage = f"{config.remote_root}/runs/{context.run_id}/{output_dir.parent.name}"
    staged = {"output_dir": f"/tmp/ft_assets/{output_dir.name}", "publish_uri": config.remote_uri(output_dir),
              "resume_dir": config.remote_uri(output_dir.parent / RESUME_DIR)}
    spec.model_copy(update=staged).write(f"{stage}/spec.json")
    return f"{stage}/spec.json"


def _read_text(path_or_uri: str) -> str | None:
    """A local or s3:// text file, or None when it is not there."""
    import fsspec

    try:
        with fsspec.open(path_or_uri, "r") as f:
            return f.read()
    except FileNotFoundError:
        return None
