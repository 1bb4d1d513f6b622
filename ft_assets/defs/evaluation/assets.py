"""reports/<recipe>: a tuned checkpoint against its baselines; reports/leaderboard/<dataset>: all of them."""

import json
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ft_assets.defs.resources import GPU_POOL
from ft_assets.lib.cleaning import read_split
from ft_assets.lib.config import DatasetConfig, ProjectConfig, RecipeConfig
from ft_assets.lib.leaderboard import write_leaderboard
from ft_assets.lib.report import evaluate_checkpoint


def build_report_asset(recipe: RecipeConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    key = dg.AssetKey(["reports", recipe.name])
    checkpoint_key = dg.AssetKey(["checkpoints", recipe.name])
    out_dir = config.root / "reports" / recipe.name
    baselines = "the majority class" + ("" if recipe.method == "head_only"
                                        else " and the untuned base with a trained head (head_only)")

    @dg.asset(
        key=key,
        group_name="evaluation",
        kinds={"pytorch"},
        # Evaluation and the baseline's training use the accelerator too.
        pool=GPU_POOL,
        deps=[checkpoint_key],
        code_version=recipe.recipe_hash()[:12],
        description=(
            f"Test-split accuracy, macro-F1, per-class table and confusion matrix of checkpoints/{recipe.name}, "
            f"against {baselines}, with the cost of training. Writes `{out_dir}/eval.json` and `report.md`."
        ),
        check_specs=[dg.AssetCheckSpec("beats_baselines", asset=key,
                                       description="the tuned model's test accuracy is above every baseline's")],
    )
    def report(context: dg.AssetExecutionContext, warehouse: DuckDBResource):
        event = context.instance.get_latest_materialization_event(checkpoint_key)
        if event is None or "checkpoint_path" not in event.asset_materialization.metadata:
            raise dg.Failure(description=f"reports/{recipe.name}: checkpoints/{recipe.name} has no materialization yet")
        checkpoint_dir = Path(event.asset_materialization.metadata["checkpoint_path"].value)
        with warehouse.get_connection() as conn:
            splits = {s: read_split(conn, recipe.dataset, s).to_pydict() for s in ("train", "validation", "test")}
        if not splits["test"]["text"]:
            raise dg.Failure(description=f"reports/{recipe.name}: datasets/{recipe.dataset} has an empty test split")
        result = evaluate_checkpoint(recipe, checkpoint_dir, splits, out_dir,
                                     baseline_cache=config.root / "reports" / "_baselines")
        headline = result.report
        beaten = {name: b["accuracy"] for name, b in headline["baselines"].items()}
        return dg.MaterializeResult(
            metadata={
                "accuracy": headline["accuracy"],
                "macro_f1": headline["macro_f1"],
                "n_test": headline["n_test"],
                **{f"baseline_{name}_accuracy": acc for name, acc in beaten.items()},
                "trainable_params": headline["trainable_params"],
                "total_params": headline["total_params"],
                "train_seconds": headline["train_seconds"],
                "checkpoint_path": dg.MetadataValue.path(str(checkpoint_dir)),
                "eval_json": dg.MetadataValue.path(str(result.eval_path)),
                "report": dg.MetadataValue.md(result.markdown),
            },
            check_results=[dg.AssetCheckResult(
                check_name="beats_baselines",
                passed=all(headline["accuracy"] > acc for acc in beaten.values()),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"accuracy": headline["accuracy"], **{f"{n}_accuracy": a for n, a in beaten.items()}},
            )],
        )

    return report


def build_leaderboard_asset(dataset: DatasetConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    recipes = [r for r in config.recipes if r.dataset == dataset.name]
    out_dir = config.root / "reports" / "leaderboard" / dataset.name

    @dg.asset(
        key=dg.AssetKey(["reports", "leaderboard", dataset.name]),
        group_name="evaluation",
        kinds={"python"},
        deps=[dg.AssetKey(["reports", r.name]) for r in recipes],
        description=(
            f"Every recipe on datasets/{dataset.name} side by side, best test accuracy first: macro-F1, gain over "
            "the untuned base, trainable parameters and their share, train time, examples/s, peak memory, "
            f"checkpoint size; a table and a chart in `{out_dir}`."
        ),
    )
    def leaderboard(context: dg.AssetExecutionContext):
        reports, missing = [], []
        for recipe in recipes:
            path = config.root / "reports" / recipe.name / "eval.json"
            if path.exists():
                reports.append(json.loads(path.read_text()))
            else:
                missing.append(recipe.name)
        if not reports:
            raise dg.Failure(description=f"reports/leaderboard/{dataset.name}: no recipe on this dataset has a "
                                         "report yet; materialize the reports first")
        rows, markdown = write_leaderboard(reports, dataset.name, out_dir, missing)
        best = rows[0]
        return dg.MaterializeResult(metadata={
            "best_recipe": best["recipe"],
            "best_accuracy": best["accuracy"],
            "recipes": len(rows),
            "missing_reports": dg.MetadataValue.json(missing),
            "leaderboard": dg.MetadataValue.md(markdown),
            "path": dg.MetadataValue.path(str(out_dir / "leaderboard.md")),
        })

    return leaderboard
