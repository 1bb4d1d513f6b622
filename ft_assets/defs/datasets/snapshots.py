"""Where training and evaluation find their rows: the dataset snapshot a record names, checked against it."""

from pathlib import Path

import dagster as dg

from ft_assets.defs.resources import latest_metadata
from ft_assets.lib.datasets.snapshot import Snapshot, open_snapshot


def recorded_snapshot(context: dg.AssetExecutionContext, dataset_key: dg.AssetKey) -> Snapshot:
    """The snapshot of the dataset version Dagster's latest materialization of `dataset_key` recorded."""
    meta = latest_metadata(context.instance, dataset_key)
    return snapshot_of(context, dataset_key, meta.get("export_path"), meta.get("published_uri"),
                       meta.get("dataset_version"))


def snapshot_of(context: dg.AssetExecutionContext, dataset_key: dg.AssetKey, path: str | None, uri: str | None,
                version: str | None) -> Snapshot:
    """The snapshot at `path` (or its s3:// copy `uri`), checked to hold `version`; a step failure that
    says what to do when it is missing or does not hold it."""
    asset = context.asset_key.to_user_string()
    dataset = dataset_key.to_user_string()
    if path is None or version is None:
        raise dg.Failure(description=f"{asset}: {dataset} has no materialization yet; materialize it first")
    try:
        return open_snapshot(Path(path), uri, version=version)
    except (FileNotFoundError, ValueError) as e:
        raise dg.Failure(description=f"{asset}: {e}. Materialize {dataset} again to write its snapshot.") from e
