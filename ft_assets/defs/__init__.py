"""Dagster definitions, one folder per stage; every asset is built from the project YAML."""

from __future__ import annotations

import dagster as dg

from ft_assets.defs.automation import automation_sensor
from ft_assets.defs.datasets.assets import build_dataset_asset
from ft_assets.defs.executor import one_step_in_process_executor
from ft_assets.defs.evaluation.assets import build_leaderboard_asset, build_report_asset
from ft_assets.defs.evaluation.learning_curve import build_learning_curve_assets
from ft_assets.defs.ingest.assets import build_raw_corpus_asset
from ft_assets.defs.ingest.sensors import build_landing_sensor
from ft_assets.defs.models.assets import build_champion_asset
from ft_assets.defs.resources import build_resources
from ft_assets.defs.training.assets import build_checkpoint_asset
from ft_assets.defs.training.lr_search import build_learning_rate_search_assets
from ft_assets.lib.config import ProjectConfig


def build_definitions(config: ProjectConfig) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            *(build_raw_corpus_asset(c, config) for c in config.corpora),
            *(build_dataset_asset(d, config) for d in config.datasets),
            *(build_checkpoint_asset(r, config) for r in config.recipes if r.learning_rate_candidates is None),
            *(a for r in config.recipes if r.learning_rate_candidates is not None
              for a in build_learning_rate_search_assets(r, config)),
            *(build_report_asset(r, config) for r in config.recipes),
            *(build(d, config) for d in config.datasets if any(r.dataset == d.name for r in config.recipes)
              for build in (build_leaderboard_asset, build_champion_asset)),
            *(a for d in config.datasets if d.learning_curve is not None for a in build_learning_curve_assets(d, config)),
        ],
        sensors=[*(build_landing_sensor(c, config) for c in config.corpora), automation_sensor(config)],
        resources=build_resources(config),
        executor=one_step_in_process_executor,
    )
