"""Declarative automation: what rebuilds by itself after a landing sensor ingests new content.

raw/<corpus>        the landing sensors (defs/ingest/sensors.py), never on a condition
datasets/<dataset>  eager: after any raw corpus it reads is updated, once its raw checks passed
checkpoints/<r>     retraining, gated (see `retraining`); never for `retrain: manual`
reports, leaderboards, champions
                    eager: follow a new checkpoint or report
"""

import dagster as dg

from ft_assets.lib.config import ProjectConfig, RetrainConfig

AUTOMATION_SENSOR = "ft_assets_automation"


def rebuild_after_upstream() -> dg.AutomationCondition:
    """Eager, and only over upstream data whose blocking checks passed."""
    return (dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        "eager, upstream checks passed")


def retraining(retrain: RetrainConfig) -> dg.AutomationCondition:
    """Train again when an upstream's content changed since this checkpoint was last requested or
    built, its blocking checks passed, a tick of the recipe's schedule has passed since the last
    request, and no run of it is in progress: after downtime one tick, so one run, never a burst."""
    upstream_changed = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).since(
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    ).with_label("an upstream's content changed since the last training")
    interval_passed = dg.AutomationCondition.cron_tick_passed(retrain.schedule).since(
        dg.AutomationCondition.newly_requested()
    ).with_label(f"a `{retrain.schedule}` tick passed since the last request")
    return (
        upstream_changed
        & interval_passed
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"retrain at most once per `{retrain.schedule}`")


def default_sensor_status(config: ProjectConfig) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if config.automation.enabled else dg.DefaultSensorStatus.STOPPED


def automation_sensor(config: ProjectConfig) -> dg.AutomationConditionSensorDefinition:
    # Dagster's default automation sensor starts stopped; this one runs from the first start.
    project = (dg.AssetSelection.key_prefixes([config.name_prefix]) if config.name_prefix
               else dg.AssetSelection.all())
    return dg.AutomationConditionSensorDefinition(
        config.qualified_name(AUTOMATION_SENSOR), target=project, default_status=default_sensor_status(config),
        minimum_interval_seconds=config.automation.evaluation_interval_seconds,
        description="Evaluates every asset's automation condition: datasets after new raw content, gated "
                    "retraining, then reports, leaderboards and champions.",
    )
