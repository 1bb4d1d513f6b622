"""learning_curve/<dataset> (one partition per recipe × fraction) and reports/learning_curve/<dataset>.

Each partition is one point: the recipe trained on a nested share of the train split, in its own process
like checkpoints/<recipe>, and scored on the whole test split like reports/<recipe>. A point runs, fails
and re-runs alone, queues on the gpu pool, and the UI's partition bar shows which are done. Fraction 1 is
the recipe's own checkpoint and report, so the report asset reads those instead of training them again.
"""


import json
import shutil
from datetime import datetime, timezone

import dagster as dg

from ft_assets.defs.automation import retraining
from ft_assets.defs.datasets.snapshots import recorded_snapshot
from ft_assets.defs.resources import GPU_POOL, asset_key, latest_metadata, resource_keys
from ft_assets.defs.training.assets import RESUME_DIR, train_checkpoint
from ft_assets.lib.config import TASK_METRICS, DatasetConfig, ProjectConfig
from ft_assets.lib.datasets.subsets import nested_subset
from ft_assets.lib.evaluation.learning_curve import curve_point, learning_curve, write_learning_curve
from ft_assets.lib.evaluation.report import evaluate_checkpoint
from ft_assets.lib.lineage import code_version
from ft_assets.lib.storage import publish, remove_partials
from ft_assets.lib.training.model_cache import local_copy

POINT_FILE = "point.json"


def fraction_key(fraction: float) -> str:
    return f"{fraction:g}"


def learning_curve_partitions(dataset: DatasetConfig) -> dg.MultiPartitionsDefinition:
    curve = dataset.learning_curve
    return dg.MultiPartitionsDefinition({
        "recipe": dg.StaticPartitionsDefinition(curve.recipes),
        "fraction": dg.StaticPartitionsDefinition([fraction_key(f) for f in curve.partial_fractions]),
    })


def build_learning_curve_assets(dataset: DatasetConfig, config: ProjectConfig) -> list[dg.AssetsDefinition]:
    """The points asset (when a fraction below 1 is asked for) and the report that gathers them."""
    curve = dataset.learning_curve
    recipes = {r.name: r for r in config.recipes if r.name in curve.recipes}
    points_key = asset_key(config, "learning_curve", dataset.name)
    dataset_key = asset_key(config, "datasets", dataset.name)
    curve_dir = config.root / "learning_curve" / dataset.name
    base_keys = sorted({asset_key(config, "checkpoints", r.base_recipe) for r in recipes.values() if r.base_recipe},
                       key=lambda k: k.to_user_string())
    settings = json.dumps(curve.model_dump(mode="json"), sort_keys=True)
    assets = []

    if curve.partial_fractions:
        @dg.asset(
            key=points_key,
            group_name="training",
            kinds={"pytorch"},
            pool=GPU_POOL,
            partitions_def=learning_curve_partitions(dataset),
            automation_condition=None if curve.retrain == "manual" else retraining(curve.retrain),
            deps=[dataset_key, *base_keys],
            code_version=code_version(settings + "".join(recipes[n].recipe_hash() for n in curve.recipes),
                                      "ft_assets.lib.training.__main__", "ft_assets.lib.evaluation.report",
                                      "ft_assets.lib.datasets.subsets"),
            description=(
                f"Learning-curve points of datasets/{dataset.name}: each of {', '.join(curve.recipes)} trained on "
                f"the nested{', stratified' if dataset.task == 'classification' else ''} shares "
                f"{', '.join(fraction_key(f) for f in curve.partial_fractions)} of the train split (seed "
                f"{curve.seed}) and scored on the whole test split. One partition per recipe × fraction; writes "
                f"`{curve_dir}/<recipe>/<fraction>/` (point.json, the report, the latest checkpoint)."
            ),
            required_resource_keys=resource_keys(config, "gpu", "launcher"),
        )
        def points(context: dg.AssetExecutionContext):
            keys = context.partition_key.keys_by_dimension
            recipe, fraction = recipes[keys["recipe"]], float(keys["fraction"])
            point_dir = curve_dir / recipe.name / keys["fraction"]
            for partial in remove_partials(point_dir / "checkpoints"):
                context.log.warning(f"removed {partial}, left by an interrupted run")
            data = recorded_snapshot(context, dataset_key)
            splits = {s: data.read_split(s).to_pydict() for s in ("train", "validation", "test")}
            subset = nested_subset(splits["train"], fraction, curve.seed, stratify=dataset.task == "classification")
            if not subset["text"]:
                raise dg.Failure(description=f"{context.asset_key.to_user_string()} [{context.partition_key}]: "
                                             f"datasets/{dataset.name} has no train rows")
            version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
            subset_path = _write_subset(config, subset, point_dir / f"train-{version}.parquet")
            output_dir = point_dir / "checkpoints" / version
            trained = train_checkpoint(context, config, recipe, data, output_dir, point_dir / RESUME_DIR,
                                       asset_key(config, "checkpoints", recipe.base_recipe) if recipe.base_recipe
                                       else None, train_path=subset_path)
            checkpoint_dir = local_copy(str(output_dir), trained.metadata.get("published_uri"))
            # The baselines learn from the whole train split, so they are the recipe's report's (and cached).
            result = evaluate_checkpoint(recipe, checkpoint_dir, splits, point_dir / "report",
                                         baseline_cache=config.root / "reports" / "_baselines", task=dataset.task)
            point = {**curve_point(result.report, recipe.name, fraction, len(subset["text"]), curve.seed),
                     "dataset_version": data.version, "checkpoint_path": str(output_dir)}
            (point_dir / POINT_FILE).write_text(json.dumps(point, indent=2) + "\n")
            # A point keeps its latest checkpoint only: its figures are what the curve needs.
            for older in sorted((point_dir / "checkpoints").iterdir()):
                if older != output_dir:
                    shutil.rmtree(older, ignore_errors=True)
            for stale in point_dir.glob("train-*.parquet"):
                if stale.name != f"train-{version}.parquet":
                    stale.unlink()
            published = publish(config, point_dir)
            metric = TASK_METRICS[dataset.task][0]
            return dg.MaterializeResult(
                metadata={metric: point["metrics"][metric], "n_train": point["n_train"], "fraction": fraction,
                          "train_seconds": point["train_seconds"], "trainable_params": point["trainable_params"],
                          "dataset_version": data.version, "checkpoint_path": dg.MetadataValue.path(str(output_dir)),
                          **published},
                data_version=dg.DataVersion(version),
            )

        assets.append(points)

    report_key = asset_key(config, "reports", "learning_curve", dataset.name)
    report_keys = {name: asset_key(config, "reports", name) for name in curve.recipes}

    @dg.asset(
        key=report_key,
        group_name="evaluation",
        # After a new dataset version it shows the recipes' new full-data points and names the stale ones.
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"python"},
        deps=([points_key] if curve.partial_fractions else []) + list(report_keys.values()),
        code_version=code_version(settings, "ft_assets.lib.evaluation.learning_curve"),
        description=(
            f"The learning curve of datasets/{dataset.name}: test {TASK_METRICS[dataset.task][0]} against training "
            f"examples for {', '.join(curve.recipes)} (log scale, the untuned and model-free baselines as lines), "
            "and per recipe the smallest fraction within one point of its full-data result. Writes "
            f"`{config.root / 'reports' / 'learning_curve' / dataset.name}/learning_curve.json`, .md and .png."
        ),
    )
    def curve_report(context: dg.AssetExecutionContext):
        # One curve, one dataset version: the latest. A point trained on an older one is left out, and named.
        version = latest_metadata(context.instance, dataset_key).get("dataset_version")
        found, missing = [], []

        def stale(trained_on: str) -> str:
            return f"trained on datasets/{dataset.name} version {trained_on[:16]}, not the latest {(version or '')[:16]}"

        for name in curve.recipes:
            for fraction in curve.partial_fractions:
                path = curve_dir / name / fraction_key(fraction) / POINT_FILE
                point = json.loads(path.read_text()) if path.is_file() else None
                if point is None:
                    missing.append(f"{name} × {fraction_key(fraction)}")
                elif point["dataset_version"] != version:
                    missing.append(f"{name} × {fraction_key(fraction)} ({stale(point['dataset_version'])})")
                else:
                    found.append(point)
        full = {}
        for name, key in report_keys.items():
            eval_path = config.root / "reports" / name / "eval.json"
            manifest = latest_metadata(context.instance, asset_key(config, "checkpoints", name)).get("manifest")
            if not (eval_path.is_file() and manifest):
                missing.append(f"{name} × 1 (reports/{name})")
            elif manifest["dataset"]["version"] != version:
                missing.append(f"{name} × 1 (reports/{name}, {stale(manifest['dataset']['version'])})")
            else:
                full[name] = (json.loads(eval_path.read_text()), manifest["train_info"]["train_examples"])
        if not found and not full:
            raise dg.Failure(description=f"{context.asset_key.to_user_string()}: no point on the latest version of "
                                         f"datasets/{dataset.name} yet ({'; '.join(missing)}); materialize the "
                                         f"partitions of {points_key.to_user_string()} and the recipes' reports first")
        built = learning_curve(dataset.name, found, full, curve.seed)
        out_dir = config.root / "reports" / "learning_curve" / dataset.name
        markdown = write_learning_curve(built, out_dir)
        if missing:
            context.log.warning(f"learning curve of {dataset.name} without: {', '.join(missing)}")
        return dg.MaterializeResult(metadata={
            "points": len(built["points"]), "missing": dg.MetadataValue.json(missing),
            "smallest_fraction_within_1_point": dg.MetadataValue.json(
                {r: s["smallest_fraction_within_1_point"] for r, s in built["recipes"].items()}),
            "report": dg.MetadataValue.md(markdown), **publish(config, out_dir),
        })

    assets.append(curve_report)
    return assets


def _write_subset(config: ProjectConfig, rows: dict[str, list], path) -> str:
    """The share's rows as the parquet a training spec reads; its s3:// copy where the storage root is one
    (a training pod reads that)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows["text"], "label": rows["label"]}), path)
    published = publish(config, path)
    return published.get("published_uri", str(path))
