"""reports/<recipe>: a tuned checkpoint against its baselines; reports/leaderboard/<dataset>: all of them."""

import json
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ft_assets.defs.datasets.snapshots import recorded_snapshot, snapshot_of
from ft_assets.defs.resources import GPU_POOL, asset_key, latest_metadata, project_resource, resource_keys
from ft_assets.lib.config import (
    LOWER_IS_BETTER, TASK_METRICS, DatasetConfig, ProjectConfig, RecipeConfig, stable_hash,
)
from ft_assets.lib.evaluation.forgetting import ForgettingTexts, forgetting_source
from ft_assets.lib.evaluation.leaderboard import forgetting_figure, write_leaderboard
from ft_assets.lib.evaluation.overfitting import OVERFITTING_CHECK, overfitting_summary
from ft_assets.lib.evaluation.report import evaluate_checkpoint
from ft_assets.lib.ingest.readers import read_texts
from ft_assets.lib.lineage import code_version
from ft_assets.lib.models.model_card import CARD_FILE
from ft_assets.lib.storage import publish, publish_text
from ft_assets.lib.training.checkpoint import MANIFEST_FILE, MERGED_DIR
from ft_assets.lib.training.model_cache import local_copy


# What each task's report measures, for the asset descriptions.
TASK_SCORES = {
    "classification": "Test-split accuracy, macro-F1, per-class table and confusion matrix",
    "instruction": "Test-split answer loss and perplexity, exact match and ROUGE-L of greedy generations, and "
                   "sample generations",
    "language_modeling": "Test-split loss and perplexity",
    "preference": "Test-pair preference accuracy and reward margin (the objective's reward), with greedy answers "
                  "for causal LMs",
}


def build_report_asset(recipe: RecipeConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    key = asset_key(config, "reports", recipe.name)
    checkpoint_key = asset_key(config, "checkpoints", recipe.name)
    dataset_key = asset_key(config, "datasets", recipe.dataset)
    out_dir = config.root / "reports" / recipe.name
    task = config.dataset(recipe.dataset).task
    metric = TASK_METRICS[task][0]
    if task == "preference":
        baselines = "the model training started from and the length-only baseline"
    elif task != "classification":
        baselines = "the untuned base model"
    else:
        baselines = "the majority class" + ("" if recipe.method == "head_only"
                                            else " and the untuned base with a trained head (head_only)")
    forgetting_key, forgetting_on = _forgetting_source(recipe, config)

    @dg.asset(
        key=key,
        group_name="evaluation",
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"pytorch"},
        # Evaluation and the baseline's training use the accelerator too.
        pool=GPU_POOL,
        deps=[checkpoint_key] + ([forgetting_key] if forgetting_key else []),
        code_version=code_version(recipe.recipe_hash(), "ft_assets.lib.evaluation.report"),
        description=(
            f"{TASK_SCORES[task]} of checkpoints/{recipe.name}, against {baselines}, with the cost of training"
            + (f", and forgetting on {forgetting_on}" if forgetting_on else "")
            + f". Writes `{out_dir}/eval.json` and `report.md`."
        ),
        check_specs=_gate_specs(recipe, key, metric, forgetting_on),
        required_resource_keys=resource_keys(config, "warehouse"),
    )
    def report(context: dg.AssetExecutionContext):
        warehouse: DuckDBResource = project_resource(context, config, "warehouse")
        meta = latest_metadata(context.instance, checkpoint_key)
        checkpoint_path = meta.get("checkpoint_path")
        if checkpoint_path is None:
            raise dg.Failure(description=f"reports/{recipe.name}: checkpoints/{recipe.name} has no materialization yet")
        # Trained on another machine: evaluate its copy from the S3 root.
        checkpoint_dir = local_copy(checkpoint_path, meta.get("published_uri"))
        # The test split of the very version the checkpoint trained on, whatever the dataset holds now.
        trained_on = (meta.get("manifest") or {}).get("dataset", {})
        if "snapshot" in trained_on:
            data = snapshot_of(context, dataset_key, trained_on["snapshot"]["path"], trained_on["snapshot"]["uri"],
                               trained_on["version"])
        else:
            context.log.warning(f"checkpoints/{recipe.name} predates dataset snapshots in manifests: evaluating on "
                                f"the latest recorded version of datasets/{recipe.dataset}")
            data = recorded_snapshot(context, dataset_key)
        # Only the splits the report reads: the test split, the train split a classifier's baselines learn
        # from (and from which a preference report's length baseline takes its direction), and the validation
        # split that picks the base+head baseline's best epoch as it picks the recipe's.
        reads = {"classification": ("train", "validation", "test"), "preference": ("train", "test")}
        splits = {s: data.read_split(s).to_pydict() for s in reads.get(task, ("test",))}
        forgetting_texts = _forgetting_texts(context, config, recipe, checkpoint_dir, warehouse)
        if not splits["test"]["text"]:
            raise dg.Failure(description=f"reports/{recipe.name}: datasets/{recipe.dataset} has an empty test split")
        result = evaluate_checkpoint(recipe, checkpoint_dir, splits, out_dir,
                                     baseline_cache=config.root / "reports" / "_baselines", task=task,
                                     forgetting_texts=forgetting_texts)
        headline = result.report
        published = publish(config, out_dir, last="eval.json")
        # The model card gains the results: beside the weights where they were written, and in their
        # S3 copy (where a checkpoint trained in a pod lives; a fetched copy in the cache is left as is).
        if checkpoint_dir == Path(checkpoint_path):
            (checkpoint_dir / CARD_FILE).write_text(result.card)
        if "published_uri" in meta:
            publish_text(result.card, f"{meta['published_uri'].rstrip('/')}/{CARD_FILE}")
        scores = {c: headline[c] for c in TASK_METRICS[task][1]}
        beaten = {name: b[metric] for name, b in headline["baselines"].items()}
        figure = forgetting_figure(headline.get("forgetting"))
        return dg.MaterializeResult(
            metadata={
                **scores,
                "n_test": headline["n_test"],
                **{f"baseline_{name}_{metric}": value for name, value in beaten.items()},
                **{f"forgetting_{k}": v for k, v in (headline.get("forgetting") or {}).items()
                   if isinstance(v, float)},
                **({"forgetting": figure} if figure is not None else {}),
                **headline["cost"],
                **{f"training_{k}": v for k, v in (headline.get("training") or {}).items()
                   if k in ("published_step", "steps_run", "stopped_early", "gap") and v is not None},
                "gates": dg.MetadataValue.json(headline["gates"]),
                "checkpoint_path": dg.MetadataValue.path(checkpoint_path),
                **published,
                "eval_json": dg.MetadataValue.path(str(result.eval_path)),
                "report": dg.MetadataValue.md(result.markdown),
            },
            check_results=[dg.AssetCheckResult(
                check_name=gate["name"],
                passed=gate["passed"],
                severity=dg.AssetCheckSeverity.ERROR if gate["blocking"] else dg.AssetCheckSeverity.WARN,
                description=gate["summary"],
                metadata={**gate["values"], "why": gate["summary"]},
            ) for gate in headline["gates"]] + _overfitting_check(recipe, headline.get("training")),
        )

    return report


def _forgetting_source(recipe: RecipeConfig, config: ProjectConfig) -> tuple[dg.AssetKey | None, str | None]:
    """The asset the recipe's forgetting texts come from and what they are, in words: raw/<corpus>, or
    for `forgetting.corpus` None the dataset the base recipe trained on (its test split)."""
    if recipe.forgetting is None:
        return None, None
    if recipe.forgetting.corpus is not None:
        return asset_key(config, "raw", recipe.forgetting.corpus), forgetting_source({"corpus": recipe.forgetting.corpus})
    dataset = _base_dataset(recipe, config)
    return (asset_key(config, "datasets", dataset.name),
            forgetting_source({"corpus": None, "dataset": dataset.name, "split": "test"}))


def _base_dataset(recipe: RecipeConfig, config: ProjectConfig) -> DatasetConfig:
    """The dataset of the recipe that recipe's checkpoint:<recipe> base is."""
    return config.dataset(next(r for r in config.recipes if r.name == recipe.base_recipe).dataset)


def _forgetting_texts(context: dg.AssetExecutionContext, config: ProjectConfig, recipe: RecipeConfig,
                      checkpoint_dir: Path, warehouse: DuckDBResource) -> ForgettingTexts | None:
    """The texts forgetting is measured on: the corpus' first max_texts texts, or the first max_texts
    rows of the test split of the dataset version the base checkpoint trained on (its snapshot)."""
    if recipe.forgetting is None:
        return None
    limit = recipe.forgetting.max_texts
    if recipe.forgetting.corpus is not None:
        with warehouse.get_connection() as conn:
            return ForgettingTexts(read_texts(conn, recipe.forgetting.corpus, limit), corpus=recipe.forgetting.corpus)
    dataset = _base_dataset(recipe, config)
    trained_on = _base_manifest(context, config, recipe, checkpoint_dir).get("dataset", {})
    if "snapshot" not in trained_on:
        raise dg.Failure(description=f"reports/{recipe.name}: the base checkpoint of {recipe.base_model} predates "
                                     "dataset snapshots in manifests, so the test split it was held out from is "
                                     f"unknown; materialize checkpoints/{recipe.base_recipe} again, or set "
                                     "forgetting.corpus")
    data = snapshot_of(context, asset_key(config, "datasets", dataset.name), trained_on["snapshot"]["path"],
                       trained_on["snapshot"]["uri"], trained_on["version"])
    texts = data.read_split("test").column("text").to_pylist()[:limit]  # in file order, as the split is scored
    return ForgettingTexts(texts, task=dataset.task, dataset=dataset.name, split="test")


def _base_manifest(context: dg.AssetExecutionContext, config: ProjectConfig, recipe: RecipeConfig,
                   checkpoint_dir: Path) -> dict:
    """The manifest of the base checkpoint this one started from (the folder its manifest names, whose
    merged/ export an adapter base leaves), not of whatever the base recipe trained since."""
    recorded = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())["base_model"]["path"]
    base_dir = recorded.rstrip("/").removesuffix(f"/{MERGED_DIR}")
    meta = latest_metadata(context.instance, asset_key(config, "checkpoints", recipe.base_recipe))
    if base_dir in (meta.get("checkpoint_path"), meta.get("published_uri")) and meta.get("manifest"):
        return meta["manifest"]
    path = Path(base_dir) / MANIFEST_FILE
    if not path.is_file():
        raise dg.Failure(description=f"reports/{recipe.name}: the base checkpoint {base_dir} that "
                                     f"checkpoints/{recipe.name} started from is neither the latest "
                                     f"checkpoints/{recipe.base_recipe} nor on this machine, so the test split it "
                                     "was held out from is unknown; materialize the checkpoint again, or set "
                                     "forgetting.corpus")
    return json.loads(path.read_text())


def _overfitting_check(recipe: RecipeConfig, training: dict | None) -> list[dg.AssetCheckResult]:
    if recipe.gates.max_validation_rise is None:
        return []
    if training is None:
        return [dg.AssetCheckResult(check_name=OVERFITTING_CHECK, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                    description="no validation evaluations were logged: nothing to check")]
    summary = overfitting_summary(training)
    return [dg.AssetCheckResult(
        check_name=OVERFITTING_CHECK, passed=not training["overfitting"], severity=dg.AssetCheckSeverity.WARN,
        description=summary,
        metadata={k: training[k] for k in ("validation_loss_rise", "lowest_validation_loss",
                                           "lowest_validation_loss_step", "last_validation_loss",
                                           "published_step", "max_validation_rise")} | {"why": summary},
    )]


def _gate_specs(recipe: RecipeConfig, key: dg.AssetKey, metric: str, forgetting_on: str | None) -> list:
    gates = recipe.gates
    margin = f" by at least {gates.min_margin:g}" if gates.min_margin else ""
    specs = [dg.AssetCheckSpec(
        "beats_baselines", asset=key, blocking=gates.blocking,
        description=f"the tuned model's test {metric} is {'below' if metric in LOWER_IS_BETTER else 'above'} every "
                    f"baseline's{margin}",
    )]
    if gates.max_validation_rise is not None:
        specs.append(dg.AssetCheckSpec(
            OVERFITTING_CHECK, asset=key, blocking=False,
            description=f"warns when the validation loss rose more than {gates.max_validation_rise:.0%} above its "
                        "lowest while the train loss kept falling (never blocks, and never keeps a champion out)",
        ))
    if gates.max_forgetting is not None:
        specs.append(dg.AssetCheckSpec(
            "forgetting_ceiling", asset=key, blocking=gates.blocking,
            description=f"forgetting on {forgetting_on} (representation drift for encoders, loss increase in "
                        f"nats for causal LMs) is at most {gates.max_forgetting:g}",
        ))
    return specs


def build_leaderboard_asset(dataset: DatasetConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    recipes = [r for r in config.recipes if r.dataset == dataset.name]
    out_dir = config.root / "reports" / "leaderboard" / dataset.name
    metric = TASK_METRICS[dataset.task][0]

    @dg.asset(
        key=asset_key(config, "reports", "leaderboard", dataset.name),
        group_name="evaluation",
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"python"},
        deps=[asset_key(config, "reports", r.name) for r in recipes],
        code_version=code_version(stable_hash([r.name for r in recipes]), "ft_assets.lib.evaluation.leaderboard"),
        description=(
            f"Every recipe on datasets/{dataset.name} side by side, best test {metric} first "
            f"({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better): the task metrics, change against the untuned "
            "base, trainable parameters and their share, train time, examples/s, tokens/s, peak memory, "
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
            **publish(config, out_dir, last="leaderboard.json"),
            "best_recipe": best["recipe"],
            f"best_{metric}": best[metric],
            "recipes": len(rows),
            "missing_reports": dg.MetadataValue.json(missing),
            "leaderboard": dg.MetadataValue.md(markdown),
            "path": dg.MetadataValue.path(str(out_dir / "leaderboard.md")),
        })

    return leaderboard
