"""models/<dataset>/champion: the best gated checkpoint of a dataset, published for serving."""

import json
from pathlib import Path

import dagster as dg

from ft_assets.defs.resources import asset_key, metadata_values
from ft_assets.lib.config import TASK_METRICS, DatasetConfig, ProjectConfig, RecipeConfig, stable_hash
from ft_assets.lib.lineage import code_version
from ft_assets.lib.models.champion import (
    CHAMPION_FILE, HISTORY_FILE, champion_record, choose_champion, current_champion, publish_champion,
    ranking_markdown,
)
from ft_assets.lib.storage import publish
from ft_assets.lib.training.checkpoint import MANIFEST_FILE
from ft_assets.lib.training.model_cache import local_copy


def build_champion_asset(dataset: DatasetConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    recipes = [r for r in config.recipes if r.dataset == dataset.name]
    key = asset_key(config, "models", dataset.name, "champion")
    champion_dir = config.root / "models" / dataset.name / "champion"
    rule = dataset.champion
    metric = rule.metric or TASK_METRICS[dataset.task][0]

    @dg.asset(
        key=key,
        group_name="models",
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"pytorch"},
        deps=[asset_key(config, "reports", r.name) for r in recipes],
        code_version=code_version(stable_hash(rule.model_dump(mode="json")), "ft_assets.lib.models.champion"),
        description=(
            f"The champion of datasets/{dataset.name}: among {', '.join(r.name for r in recipes)}, the recipe whose "
            f"latest report passed every gate check with the best test {metric} (ties within {rule.tolerance:g} go "
            f"to the lowest {' then '.join(rule.tie_break)}). Published whole to `{champion_dir}` (weights, merged "
            "export if any, tokenizer, manifest, model card, champion.json with the ranking). If no recipe passes, "
            "the previous champion stays and the materialization says why."
        ),
        check_specs=[dg.AssetCheckSpec(
            "promoted_a_gated_recipe", asset=key,
            description="this materialization promoted (or kept) a recipe whose gates all passed, rather than "
                        "keeping an older champion because none passed",
        )],
    )
    def champion(context: dg.AssetExecutionContext):
        candidates = [c for c in (_candidate(context.instance, r, dataset, config) for r in recipes) if c is not None]
        decision = choose_champion(candidates, rule, dataset.task)
        previous = current_champion(champion_dir)
        ranking = dg.MetadataValue.md(ranking_markdown(decision))
        winner = decision["winner"]
        if winner is None:
            if previous is None:
                raise dg.Failure(description=f"models/{dataset.name}/champion: {decision['why']}; nothing to "
                                             "publish yet.\n\n" + ranking_markdown(decision))
            context.log.warning(f"keeping {previous['recipe']} as champion: {decision['why']}")
            return dg.MaterializeResult(
                metadata={**_lineage(previous, champion_dir), "decision": "kept_previous",
                          "why": f"{decision['why']}; the previous champion {previous['recipe']} "
                                 f"({previous['checkpoint_version']}) stays", "ranking": ranking},
                data_version=dg.DataVersion(previous["checkpoint_version"]),
                check_results=[dg.AssetCheckResult(
                    check_name="promoted_a_gated_recipe", passed=False, severity=dg.AssetCheckSeverity.WARN,
                    description=decision["why"], metadata={"why": decision["why"]},
                )],
            )
        record = champion_record(decision, dataset.name, context.run_id)
        unchanged = previous is not None and previous["checkpoint"] == record["checkpoint"]
        if not unchanged:
            publish_champion(Path(winner["local_copy"]), champion_dir, record)
            publish(config, champion_dir, last=CHAMPION_FILE)
            publish(config, champion_dir.parent / HISTORY_FILE)
            context.log.info(f"published {record['recipe']} ({record['checkpoint_version']}) to {champion_dir}")
        return dg.MaterializeResult(
            metadata={**_lineage(record, champion_dir), "decision": "unchanged" if unchanged else "promoted",
                      metric: record["value"], "why": decision["why"], "ranking": ranking},
            data_version=dg.DataVersion(record["checkpoint_version"]),
            check_results=[dg.AssetCheckResult(
                check_name="promoted_a_gated_recipe", passed=True, description=decision["why"],
            )],
        )

    return champion


def _lineage(record: dict, champion_dir: Path) -> dict:
    return {
        "recipe": record["recipe"],
        "checkpoint_path": dg.MetadataValue.path(record["checkpoint"]),
        "checkpoint_version": record["checkpoint_version"],
        "checkpoint_run_id": record["checkpoint_run_id"],
        "report_run_id": record["report_run_id"],
        "champion_path": dg.MetadataValue.path(str(champion_dir)),
    }


def _candidate(instance: dg.DagsterInstance, recipe: RecipeConfig, dataset: DatasetConfig,
               config: ProjectConfig) -> dict | None:
    """The recipe's latest report as a candidate, its gates read from the Dagster check records of that
    very materialization (a check from another run, or none, counts as not passed)."""
    report_key = asset_key(config, "reports", recipe.name)
    event = instance.get_latest_materialization_event(report_key)
    if event is None:
        return None
    meta = metadata_values(event.asset_materialization)
    summaries = {g["name"]: g["summary"] for g in meta.get("gates", [])}
    gates = []
    for name in ["beats_baselines"] + (["forgetting_ceiling"] if recipe.gates.max_forgetting is not None else []):
        check = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(report_key, name))
        evaluated = check is not None and check.run_id == event.run_id
        passed = evaluated and check.status.value == "SUCCEEDED"
        summary = summaries.get(name) if evaluated else None
        gates.append({"name": name, "passed": passed,
                      "summary": summary or f"not evaluated for the latest report; re-materialize reports/{recipe.name}"})
    checkpoint = meta["checkpoint_path"]
    local = local_copy(checkpoint, config.remote_uri(Path(checkpoint)) if config.remote_root else None)
    manifest_path = local / MANIFEST_FILE
    if not manifest_path.is_file():
        gates.append({"name": "checkpoint_present", "passed": False,
                      "summary": f"the evaluated checkpoint {checkpoint} is no longer on disk"})
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"dagster": {"run_id": None}}
    return {
        "recipe": recipe.name,
        "method": recipe.method,
        "metrics": {m: meta[m] for m in TASK_METRICS[dataset.task][1]},
        "forgetting": meta.get("forgetting"),
        "trainable_params": meta["trainable_params"],
        "train_seconds": meta["train_seconds"],
        "gates": gates,
        "checkpoint": checkpoint,
        "local_copy": str(local),
        "checkpoint_run_id": manifest["dagster"]["run_id"],
        "report_run_id": event.run_id,
    }
