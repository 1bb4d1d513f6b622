"""checkpoints/<recipe>: one fine-tuning run, in its own process through Dagster Pipes."""


import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ft_assets.defs.automation import retraining
from ft_assets.defs.resources import GPU_POOL, GpuResource, local_copy, publish
from ft_assets.lib.cleaning import dataset_labels, read_split
from ft_assets.lib.config import ProjectConfig, RecipeConfig
from ft_assets.lib.lineage import code_version, dataset_files, git_state
from ft_assets.lib.models import MANIFEST_FILE, MERGED_DIR, TRAINING_ERROR_FILE

PROJECT_DIR = Path(__file__).resolve().parents[3]


def build_checkpoint_asset(recipe: RecipeConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    dataset = config.dataset(recipe.dataset)
    dataset_key = dg.AssetKey(["datasets", dataset.name])
    recipe_dir = config.root / "checkpoints" / recipe.name
    # base_model checkpoint:<recipe> makes that recipe's checkpoint an upstream asset.
    base_key = dg.AssetKey(["checkpoints", recipe.base_recipe]) if recipe.base_recipe else None
    base = f"the latest checkpoints/{recipe.base_recipe}" if base_key else f"`{recipe.base_model}`"

    @dg.asset(
        key=dg.AssetKey(["checkpoints", recipe.name]),
        group_name="training",
        kinds={"pytorch"},
        pool=GPU_POOL,
        deps=[dataset_key] + ([base_key] if base_key else []),
        code_version=code_version(recipe.recipe_hash(), "train", "methods", "models", "causal_data"),
        automation_condition=None if recipe.retrain == "manual" else retraining(recipe.retrain),
        description=(
            f"`{recipe.method}` {'training' if recipe.scratch else 'fine-tuning'} of {base} on datasets/{dataset.name} "
            f"({dataset.task.replace('_', ' ')}, "
            f"{recipe.training.epochs} epochs, lr {recipe.learning_rate:g}, batch {recipe.training.batch_size}). "
            f"Writes a save_pretrained directory under `{recipe_dir}/<version>/` with manifest.json: raw files "
            "and their sha256, dataset version, recipe hash, base weights sha256, library versions, git SHA, run id."
        ),
        metadata={"recipe": dg.MetadataValue.json(recipe.model_dump(mode="json"))},
    )
    def checkpoint(context: dg.AssetExecutionContext, warehouse: DuckDBResource, gpu: GpuResource,
                   pipes_subprocess_client: dg.PipesSubprocessClient):
        _remove_partials(context, recipe_dir)
        version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
        output_dir = recipe_dir / version
        base_model_path = _base_checkpoint_path(context, base_key) if base_key else None
        with tempfile.TemporaryDirectory(prefix=f"ft_assets_{recipe.name}_") as tmp:
            with warehouse.get_connection() as conn:
                splits = {s: read_split(conn, dataset.name, s, in_file_order=dataset.task == "language_modeling")
                          for s in ("train", "validation")}
                labels = dataset_labels(conn, dataset)
                files = dataset_files(conn, dataset.name, [c.name for c in config.dataset_corpora(dataset)])
            if splits["train"].num_rows == 0:
                raise dg.Failure(description=f"checkpoints/{recipe.name}: datasets/{dataset.name} has no train rows; "
                                             "materialize it first or add data")
            import pyarrow.parquet as pq

            paths = {}
            for split, table in splits.items():
                paths[split] = str(Path(tmp) / f"{split}.parquet")
                pq.write_table(table, paths[split])
            dataset_event = context.instance.get_latest_materialization_event(dataset_key)
            spec = {
                "recipe": recipe.model_dump(mode="json"),
                "task": dataset.task,
                "labels": labels,
                "base_model_path": base_model_path,
                "train_path": paths["train"],
                "validation_path": paths["validation"] if splits["validation"].num_rows else None,
                "output_dir": str(output_dir),
                "device": gpu.device,
                "precision": gpu.precision,
                "lineage": {
                    "dataset": {
                        "name": dataset.name,
                        "version": _metadata_value(dataset_event, "dataset_version"),
                        "config_hash": config.dataset_hash(dataset),
                        "raw_files": files,
                    },
                    "code": {"git": git_state(PROJECT_DIR), "config_file": str(config.source)},
                    "dagster": {"run_id": context.run_id, "asset_key": context.asset_key.to_user_string()},
                },
            }
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec))
            context.log.info(f"training {recipe.name} ({recipe.method}) on {splits['train'].num_rows} rows "
                             f"into {output_dir}")
            try:
                invocation = pipes_subprocess_client.run(
                    command=[sys.executable, "-m", "ft_assets.lib.train", str(spec_path)], context=context,
                )
            except Exception as e:
                error_file = Path(tmp) / TRAINING_ERROR_FILE
                reason = error_file.read_text() if error_file.exists() else f"the process ended without one: {e}"
                raise dg.Failure(description=f"checkpoints/{recipe.name}: training failed and nothing was "
                                             f"registered (no folder at {output_dir}). Reason: {reason}") from e
        reported = invocation.get_materialize_result()
        manifest = json.loads((output_dir / MANIFEST_FILE).read_text())
        # Manifest last: on S3 a checkpoint is complete once its manifest is there.
        published = publish(config, output_dir, last=MANIFEST_FILE)
        return dg.MaterializeResult(
            metadata={
                **(reported.metadata or {}),
                **published,
                "checkpoint_path": dg.MetadataValue.path(str(output_dir)),
                "version": version,
                "recipe_hash": manifest["recipe_hash"],
                "manifest": dg.MetadataValue.json(manifest),
            },
            data_version=dg.DataVersion(version),
        )

    return checkpoint


def _base_checkpoint_path(context: dg.AssetExecutionContext, base_key: dg.AssetKey) -> str:
    """The model directory of the base recipe's latest checkpoint (its merged/ export for an adapter)."""
    event = context.instance.get_latest_materialization_event(base_key)
    path = _metadata_value(event, "checkpoint_path")
    if path is None:
        raise dg.Failure(description=f"{context.asset_key.to_user_string()} starts from "
                                     f"{base_key.to_user_string()}, which has no materialization yet")
    path = local_copy(path, _metadata_value(event, "published_uri"))
    merged = Path(path) / MERGED_DIR
    return str(merged if merged.is_dir() else Path(path))


def _metadata_value(event, key: str):
    if event is None or event.asset_materialization is None:
        return None
    entry = event.asset_materialization.metadata.get(key)
    return entry.value if entry is not None else None


def _remove_partials(context: dg.AssetExecutionContext, recipe_dir: Path) -> None:
    """Staging directories left by a killed run: never registered, safe to delete (runs of a recipe queue)."""
    for partial in recipe_dir.glob(".*.partial-*") if recipe_dir.exists() else []:
        context.log.warning(f"removing {partial}, left by an interrupted run")
        shutil.rmtree(partial, ignore_errors=True)
