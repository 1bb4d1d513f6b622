"""learning_rate_search/<recipe> (one partition per candidate rate) and the checkpoints/<recipe> that publishes
the best of them, for a recipe with `training.learning_rate: {search: [...] | auto}`.

Each candidate trains like checkpoints/<recipe> would, in its own process, and is scored by its own run on the
validation split (the figures that picked its published step). A candidate runs, fails and re-runs alone and
queues on the gpu pool. checkpoints/<recipe> then copies the candidate with the best validation figure into
the recipe's folder, with every candidate's figures in its manifest: the test split plays no part in the
choice (neither asset reads it), and reports/<recipe> scores the chosen weights on it as for any recipe.
"""


import shutil
from datetime import datetime, timezone

import dagster as dg

from ft_assets.defs.automation import retraining
from ft_assets.defs.datasets.snapshots import recorded_snapshot
from ft_assets.defs.resources import GPU_POOL, asset_key, latest_partition_metadata, resource_keys
from ft_assets.defs.training.assets import RESUME_DIR, train_checkpoint
from ft_assets.lib.config import ProjectConfig, RecipeConfig, learning_rate_key
from ft_assets.lib.evaluation.rendering import learning_rate_search_markdown
from ft_assets.lib.lineage import code_version
from ft_assets.lib.storage import publish, remove_partials
from ft_assets.lib.training.checkpoint import MANIFEST_FILE, copy_checkpoint
from ft_assets.lib.training.model_cache import local_copy
from ft_assets.lib.training.selection import best_candidate

CANDIDATE_FIELDS = ("published_step", "steps_run", "steps_planned", "stopped_early", "train_seconds",
                    "final_train_loss", "selection_metric")


def build_learning_rate_search_assets(recipe: RecipeConfig, config: ProjectConfig) -> list[dg.AssetsDefinition]:
    dataset = config.dataset(recipe.dataset)
    dataset_key = asset_key(config, "datasets", dataset.name)
    candidates_key = asset_key(config, "learning_rate_search", recipe.name)
    base_key = asset_key(config, "checkpoints", recipe.base_recipe) if recipe.base_recipe else None
    rates = {learning_rate_key(rate): rate for rate in recipe.learning_rate_candidates}
    search_dir = config.root / "learning_rate_search" / recipe.name
    recipe_dir = config.root / "checkpoints" / recipe.name

    @dg.asset(
        key=candidates_key,
        group_name="training",
        kinds={"pytorch"},
        pool=GPU_POOL,
        partitions_def=dg.StaticPartitionsDefinition(list(rates)),
        deps=[dataset_key] + ([base_key] if base_key else []),
        code_version=code_version(recipe.recipe_hash(), "ft_assets.lib.training.__main__"),
        automation_condition=None if recipe.retrain == "manual" else retraining(recipe.retrain),
        description=(
            f"The learning-rate search of {recipe.name}: `{recipe.method}` trained once per rate "
            f"({', '.join(rates)}) on the snapshot of datasets/{dataset.name} that Dagster recorded last, each "
            f"scored on the validation split. One partition per rate; writes `{search_dir}/<rate>/<version>/`. "
            f"checkpoints/{recipe.name} publishes the best."
        ),
        required_resource_keys=resource_keys(config, "gpu", "launcher"),
    )
    def candidates(context: dg.AssetExecutionContext):
        rate_key = context.partition_key
        candidate = recipe.with_learning_rate(rates[rate_key])
        rate_dir = search_dir / rate_key
        for partial in remove_partials(rate_dir):
            context.log.warning(f"removed {partial}, left by an interrupted run")
        data = recorded_snapshot(context, dataset_key)
        what = f"{context.asset_key.to_user_string()} [{rate_key}]"
        if data.rows("train") == 0 or data.rows("validation") == 0:
            split = "train" if data.rows("train") == 0 else "validation"
            raise dg.Failure(description=f"{what}: datasets/{dataset.name} version {data.version[:16]} has no "
                                         f"{split} rows, and the search trains on the one and chooses on the other")
        version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
        output_dir = rate_dir / version
        trained = train_checkpoint(context, config, candidate, data, output_dir, rate_dir / RESUME_DIR, base_key)
        info = trained.manifest["train_info"]
        result = {
            "learning_rate": candidate.learning_rate,
            "head_learning_rate": candidate.training.head_learning_rate,
            # The figures of the weights this candidate would publish: its best step's, or its last's.
            "validation": info["best_eval"] if info["keep"] == "best" else info["final_eval"],
            **{field: info.get(field) for field in CANDIDATE_FIELDS},
            "recipe_hash": candidate.recipe_hash(),
            "dataset_version": data.version,
            "checkpoint_path": str(output_dir),
            "run_id": context.run_id,
        }
        # A candidate keeps its latest run only; the checkpoint it won with is copied out of here.
        for older in sorted(p for p in rate_dir.iterdir() if p.is_dir() and p != output_dir and p.name != RESUME_DIR):
            shutil.rmtree(older, ignore_errors=True)
        validation = result["validation"] or {}
        return dg.MaterializeResult(
            metadata={
                **trained.metadata,
                **{k: v for k, v in validation.items() if k.startswith("eval_") and isinstance(v, float)},
                "learning_rate": result["learning_rate"],
                "candidate": dg.MetadataValue.json(result),
                "checkpoint_path": dg.MetadataValue.path(str(output_dir)),
                "manifest": dg.MetadataValue.json(trained.manifest),
            },
            data_version=dg.DataVersion(version),
        )

    @dg.asset(
        key=asset_key(config, "checkpoints", recipe.name),
        group_name="training",
        kinds={"pytorch"},
        deps=[candidates_key],
        code_version=code_version(recipe.recipe_hash(), "ft_assets.lib.training.selection",
                                  "ft_assets.lib.training.checkpoint"),
        # Choosing is cheap; it follows the last candidate (eager waits while any is missing or running).
        automation_condition=None if recipe.retrain == "manual" else dg.AutomationCondition.eager(),
        description=(
            f"`{recipe.method}` fine-tuning on datasets/{recipe.dataset} at the learning rate (of {', '.join(rates)}) "
            f"whose run scored best on the validation split (learning_rate_search/{recipe.name}); its weights copied "
            f"into `{recipe_dir}/<version>/`, every candidate's figures in manifest.json. The test split is not "
            "read to choose."
        ),
        metadata={"recipe": dg.MetadataValue.json(recipe.model_dump(mode="json"))},
    )
    def checkpoint(context: dg.AssetExecutionContext):
        data = recorded_snapshot(context, dataset_key)
        found, problems = [], []
        for rate_key, rate in rates.items():
            meta = latest_partition_metadata(context.instance, candidates_key, rate_key)
            result = meta.get("candidate")
            if result is None:
                problems.append(f"{rate_key} has no run yet")
            elif result["dataset_version"] != data.version:
                problems.append(f"{rate_key} trained on datasets/{dataset.name} version "
                                f"{result['dataset_version'][:16]}, and the latest is {data.version[:16]}")
            elif result["recipe_hash"] != recipe.with_learning_rate(rate).recipe_hash():
                problems.append(f"{rate_key} trained with other settings than the recipe's now")
            else:
                found.append((result, meta))
        if problems:
            raise dg.Failure(description=(
                f"checkpoints/{recipe.name} chooses among every candidate of its learning-rate search, trained on "
                f"the same data; " + "; ".join(problems) + ". Materialize those partitions of "
                f"learning_rate_search/{recipe.name} (dagster asset materialize --select "
                f"'key:\"learning_rate_search/{recipe.name}\"' --partition <rate>), then this again"))
        winner = best_candidate(dataset.task, [result["validation"] for result, _ in found])
        if winner is None:
            raise dg.Failure(description=f"checkpoints/{recipe.name}: no candidate of its learning-rate search has "
                                         "a finite validation figure; every rate diverged or evaluated to NaN")
        chosen, chosen_meta = found[winner]
        search = {
            "recipe_hash": recipe.recipe_hash(),
            "selection_metric": chosen["selection_metric"],
            "chosen_learning_rate": chosen["learning_rate"],
            "split": "validation",
            "candidates": [{**result, "chosen": i == winner} for i, (result, _) in enumerate(found)],
            "train_seconds_all_candidates": sum(result["train_seconds"] or 0.0 for result, _ in found),
            "selected_by": {"run_id": context.run_id},
        }
        version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
        output_dir = recipe_dir / version
        for partial in remove_partials(recipe_dir):
            context.log.warning(f"removed {partial}, left by an interrupted run")
        source = local_copy(chosen["checkpoint_path"], chosen_meta.get("published_uri"))
        manifest = copy_checkpoint(source, output_dir, learning_rate_search=search)
        published = publish(config, output_dir, last=MANIFEST_FILE)
        metric = chosen["selection_metric"]
        context.log.info(f"{recipe.name}: learning rate {chosen['learning_rate']:g} has the best validation "
                         f"{metric} ({chosen['validation'].get(metric):.4f}) of "
                         + ", ".join(f"{r['learning_rate']:g}" for r, _ in found))
        carried = {k: v for k, v in chosen_meta.items()
                   if k not in ("candidate", "checkpoint_path", "manifest", "published_uri", "learning_rate")}
        return dg.MaterializeResult(
            metadata={
                **carried,
                "learning_rate": chosen["learning_rate"],
                "learning_rate_search": dg.MetadataValue.md(learning_rate_search_markdown(search)),
                "checkpoint_path": dg.MetadataValue.path(str(output_dir)),
                "version": version,
                "recipe_hash": manifest["recipe_hash"],
                "manifest": dg.MetadataValue.json(manifest),
                **published,
            },
            data_version=dg.DataVersion(version),
        )

    return [candidates, checkpoint]

