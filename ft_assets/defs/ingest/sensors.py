"""landing_<corpus>: a sensor per corpus that requests raw/<corpus> when the landing location's content changes."""

import json

import dagster as dg

from ft_assets.defs.automation import default_sensor_status
from ft_assets.defs.resources import asset_key, latest_metadata
from ft_assets.lib.config import CorpusConfig, ProjectConfig
from ft_assets.lib.ingest.landing import landing_changes, list_landing, needs_ingest

TRIGGER_TAG = "ft_assets/landing_changes"


def build_landing_sensor(corpus: CorpusConfig, config: ProjectConfig) -> dg.SensorDefinition:
    key = asset_key(config, "raw", corpus.name)
    location = config.corpus_location(corpus)

    @dg.sensor(
        name=config.qualified_name(f"landing_{corpus.name}"),
        target=[key],
        # Listing is cheap (unchanged files are not read again), so a short interval is fine.
        minimum_interval_seconds=config.automation.landing_interval_seconds,
        default_status=default_sensor_status(config),
        description=(
            f"Watches `{location}` and requests raw/{corpus.name} when content arrives, changes or is withdrawn, "
            "keyed by sha256: the same bytes under another name, or seen again, start nothing. The run's "
            f"`{TRIGGER_TAG}` tag names the files."
        ),
    )
    def landing_sensor(context: dg.SensorEvaluationContext):
        previous = json.loads(context.cursor) if context.cursor else _last_ingested(context.instance, key)
        try:
            current = list_landing(location, previous)
        except FileNotFoundError as e:
            return dg.SkipReason(f"raw/{corpus.name}: {e}")
        changes = landing_changes(previous, current)
        cursor = json.dumps(current)
        if not needs_ingest(changes):
            moved = f"; {len(changes['moved'])} file(s) renamed or copied, same content" if changes["moved"] else ""
            return dg.SensorResult(skip_reason=f"no new or withdrawn content in {location} "
                                               f"({len(current)} file(s){moved})", cursor=cursor)
        return dg.SensorResult(
            # No run_key: the cursor already makes each change count once, and content that comes
            # back after a withdrawal must be ingested again.
            run_requests=[dg.RunRequest(
                asset_selection=[key],
                tags={TRIGGER_TAG: describe_changes(changes)},
            )],
            cursor=cursor,
        )

    return landing_sensor


def describe_changes(changes: dict[str, list[dict]], limit: int = 1000) -> str:
    """`arrived: a.csv (1f2e3d4c5b6a), ...; withdrawn: ...`, cut to `limit` characters for a run tag."""
    parts = []
    for kind in ("arrived", "changed", "withdrawn", "moved"):
        if changes[kind]:
            files = ", ".join(f"{c['uri'].rsplit('/', 1)[-1]} ({c['sha256'][:12]})" for c in changes[kind])
            parts.append(f"{kind}: {files}")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_ingested(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, dict]:
    """Without a cursor (a new sensor), the files the latest raw materialization read, so content that
    was already ingested (by hand or by `make demo`) is not requested again. Stamps are unknown, so
    each file is hashed once."""
    files = latest_metadata(instance, key).get("raw_files") or []
    return {f["source_uri"]: {"sha256": f["file_sha256"], "bytes": None, "stamp": None} for f in files}
