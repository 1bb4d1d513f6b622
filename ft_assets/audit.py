"""Lineage audits, read from the Dagster instance's event log and the manifests recorded in it.

Nothing here lists directories: every answer comes from materialization events (their metadata,
tags and run ids) and the asset check evaluations of those runs, so an audit of a past run is as
right as one of the latest. Two directions:

- down the chain: champion -> checkpoint -> dataset version -> raw files, plus the evaluation and
  its gates (`audit_checkpoint`, `audit_champion`);
- up from a raw file: every dataset version, checkpoint and champion that consumed it, and which
  current assets must be rebuilt without it (`audit_raw_file`).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from ft_assets.defs.resources import metadata_values
from ft_assets.lib.config import ProjectConfig
from ft_assets.lib.evaluation.overfitting import OVERFITTING_CHECK
from ft_assets.lib.lineage import AuditError
from ft_assets.lib.training.checkpoint import MERGED_DIR
from ft_assets.lib.storage import sha256_file


def open_instance(config: ProjectConfig, dagster_home: str | None) -> dg.DagsterInstance:
    """The instance at `dagster_home`, else DAGSTER_HOME, else `<storage root>/dagster` (the Makefile's)."""
    home = Path(dagster_home or os.environ.get("DAGSTER_HOME") or config.root / "dagster")
    if not home.is_dir():
        raise AuditError(f"no Dagster instance at {home}: pass --dagster-home or set DAGSTER_HOME")
    return dg.DagsterInstance.from_config(str(home))


# --- reading the event log -------------------------------------------------------------------

def _materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list:
    """Every materialization record of `key`, oldest first."""
    records, cursor = [], None
    while True:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=500, cursor=cursor,
                                               ascending=True)
        records += page.records
        if not page.has_more:
            return records
        cursor = page.cursor


def _meta(record) -> dict:
    return metadata_values(record.asset_materialization)


def _event(record, current_id: int | None) -> dict:
    """What every audited materialization shows: its asset, run, time, and whether it is still the latest."""
    tags = record.asset_materialization.tags or {}
    return {
        "asset": record.asset_key.to_user_string(),
        "run_id": record.run_id,
        "event_id": record.storage_id,
        "materialized_at": datetime.fromtimestamp(record.timestamp, timezone.utc).isoformat(timespec="seconds"),
        "code_version": tags.get("dagster/code_version"),
        "data_version": tags.get("dagster/data_version"),
        "current": record.storage_id == current_id,
    }


class _History:
    """Materializations per asset key, read once per audit, of one project: its keys start with `project`
    when it shares its code location with other projects (the FineTuningProject component)."""

    def __init__(self, instance: dg.DagsterInstance, project: str | None = None):
        self.instance = instance
        self.project = project
        self._records: dict[dg.AssetKey, list] = {}

    def key(self, *parts: str) -> dg.AssetKey:
        return dg.AssetKey([self.project, *parts] if self.project else list(parts))

    def records(self, key: dg.AssetKey) -> list:
        if key not in self._records:
            self._records[key] = _materializations(self.instance, key)
        return self._records[key]

    def latest_id(self, key: dg.AssetKey) -> int | None:
        records = self.records(key)
        return records[-1].storage_id if records else None

    def event(self, record) -> dict:
        return _event(record, self.latest_id(record.asset_key))

    def prefixed(self, kind: str) -> list:
        """Every record of every asset of this project under `kind` (raw, datasets, ...), oldest first."""
        keys = self.instance.get_asset_keys(prefix=self.key(kind).path)
        records = [r for key in keys for r in self.records(key)]
        return sorted(records, key=lambda r: r.storage_id)


# --- down the chain --------------------------------------------------------------------------

def audit_checkpoint(instance: dg.DagsterInstance, recipe: str, run_id: str | None = None,
                     project: str | None = None) -> dict:
    """The chain behind one checkpoint of `recipe`: the latest, or the one materialized in `run_id`."""
    history = _History(instance, project)
    key = history.key("checkpoints", recipe)
    records = history.records(key)
    if run_id is not None:
        records = [r for r in records if r.run_id == run_id]
    if not records:
        where = f" in run {run_id}" if run_id else ""
        raise AuditError(f"{key.to_user_string()} has no materialization{where} in this Dagster instance")
    return _checkpoint_chain(history, records[-1])


def audit_champion(instance: dg.DagsterInstance, dataset: str, project: str | None = None) -> dict:
    """The current champion of `dataset`, why it was chosen, and the chain behind its checkpoint."""
    history = _History(instance, project)
    key = history.key("models", dataset, "champion")
    records = history.records(key)
    if not records:
        raise AuditError(f"{key.to_user_string()} has no materialization in this Dagster instance")
    record = records[-1]
    meta = _meta(record)
    checkpoint = _checkpoint_record(history, meta["recipe"], meta["checkpoint_path"])
    return {
        "champion": {**history.event(record), "recipe": meta["recipe"], "decision": meta["decision"],
                     "why": meta["why"], "path": meta["champion_path"], "checkpoint_version": meta["checkpoint_version"]},
        **_checkpoint_chain(history, checkpoint),
    }


def _checkpoint_record(history: _History, recipe: str, path: str):
    for record in reversed(history.records(history.key("checkpoints", recipe))):
        if _meta(record).get("checkpoint_path") == path:
            return record
    raise AuditError(f"no materialization of checkpoints/{recipe} wrote {path}")


def _checkpoint_chain(history: _History, record) -> dict:
    meta = _meta(record)
    manifest = meta["manifest"]
    path = meta["checkpoint_path"]
    chain = {
        "checkpoint": {
            **history.event(record), "version": meta["version"], "path": path,
            "recipe": manifest["recipe"]["name"], "method": manifest["recipe"]["method"],
            "recipe_hash": manifest["recipe_hash"], "settings": manifest["recipe"],
            "git": manifest["code"]["git"], "libraries": manifest["libraries"], "base_model": manifest["base_model"],
            # A searched learning rate: which candidate run these weights are, and what it was chosen over.
            **({"learning_rate_search": manifest["learning_rate_search"]} if manifest.get("learning_rate_search") else {}),
        },
        "dataset": _dataset_version(history, manifest["dataset"], record.timestamp),
        "raw_files": manifest["dataset"]["raw_files"],
        "evaluation": _evaluation(history, manifest["recipe"]["name"], path),
    }
    base = _base_checkpoint(history, manifest["base_model"].get("path"))
    if base is not None:
        chain["base_checkpoint"] = _checkpoint_chain(history, base)
    return chain


def _dataset_version(history: _History, lineage: dict, before: float) -> dict:
    """The dataset materialization the checkpoint trained on: its version, split sizes and quarantine."""
    found = {"name": lineage["name"], "version": lineage["version"], "config_hash": lineage["config_hash"],
             # The files it read; absent from manifests older than dataset snapshots.
             "snapshot": lineage.get("snapshot")}
    for record in reversed(history.records(history.key("datasets", lineage["name"]))):
        meta = _meta(record)
        if record.timestamp <= before and meta.get("dataset_version") == lineage["version"]:
            return {**found, **history.event(record),
                    "rows": {s: meta.get(f"rows_{s}") for s in ("train", "validation", "test")},
                    "quarantined": meta.get("quarantined"), "quarantine_by_reason": meta.get("quarantine_by_reason"),
                    "duplicates": meta.get("duplicates"), "cleaning_code_version": meta.get("cleaning_code_version")}
    return {**found, "note": "no materialization with this version is left in the event log"}


def _evaluation(history: _History, recipe: str, checkpoint_path: str) -> dict | None:
    """The latest report on exactly this checkpoint, with the gate checks evaluated in that run."""
    key = history.key("reports", recipe)
    for record in reversed(history.records(key)):
        meta = _meta(record)
        if meta.get("checkpoint_path") != checkpoint_path:
            continue
        checks = history.instance.all_logs(record.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        evaluated = [{"name": e.dagster_event.event_specific_data.check_name,
                      "passed": e.dagster_event.event_specific_data.passed,
                      "severity": e.dagster_event.event_specific_data.severity.value,
                      "summary": e.dagster_event.event_specific_data.description}
                     for e in checks if e.dagster_event.event_specific_data.asset_key == key]
        metrics = {k: v for k, v in meta.items() if isinstance(v, float) and not k.startswith("baseline_")}
        # The gates decide the champion; the overfitting check only warns, so it is listed apart.
        return {**history.event(record), "metrics": metrics,
                "gates": [c for c in evaluated if c["name"] != OVERFITTING_CHECK],
                "warnings": [c for c in evaluated if c["name"] == OVERFITTING_CHECK]}
    return None


def _base_checkpoint_dir(base_path: str | None) -> str | None:
    """The checkpoint folder a checkpoint:<recipe> base was loaded from: the folder itself, or the one
    holding the merged/ export it was read from."""
    if base_path is None:
        return None
    path = Path(base_path)
    return str(path.parent) if path.name == MERGED_DIR else base_path


def _base_checkpoint(history: _History, base_path: str | None):
    """The checkpoint materialization a checkpoint:<recipe> base points at."""
    base_dir = _base_checkpoint_dir(base_path)
    if base_dir is None:
        return None
    for record in reversed(history.prefixed("checkpoints")):
        if _meta(record).get("checkpoint_path") == base_dir:
            return record
    return None


# --- up from a raw file ----------------------------------------------------------------------

def resolve_raw_file(target: str) -> tuple[str | None, str | None]:
    """(sha256, uri) for a 64-hex digest, or for a path (hashed if it still exists, else matched by URI)."""
    if len(target) == 64 and all(c in "0123456789abcdef" for c in target.lower()):
        return target.lower(), None
    if "://" in target:
        return None, target
    path = Path(target).resolve()
    return (sha256_file(path) if path.is_file() else None), path.as_uri()


def audit_raw_file(instance: dg.DagsterInstance, sha256: str | None, uri: str | None,
                   project: str | None = None) -> dict:
    """Every materialization that consumed the file, past and current, and the current assets to rebuild."""
    history = _History(instance, project)

    def matches(files: list[dict], sha_key: str, uri_key: str) -> list[dict]:
        return [f for f in files if (sha256 and f.get(sha_key) == sha256) or (not sha256 and f.get(uri_key) == uri)]

    found = {"sha256": sha256, "uri": uri, "raw": [], "datasets": [], "checkpoints": [], "champions": [],
             "reports": []}
    for record in history.prefixed("raw"):
        files = matches(_meta(record).get("raw_files") or [], "file_sha256", "source_uri")
        if files:
            found["raw"].append({**history.event(record), "uri": files[0]["source_uri"], "rows": files[0]["rows"]})
    for record in history.prefixed("datasets"):
        meta = _meta(record)
        files = matches(meta.get("raw_files") or [], "sha256", "uri")
        if files:
            found["datasets"].append({**history.event(record), "version": meta.get("dataset_version"),
                                      "uri": files[0]["uri"], "rows": files[0]["rows"]})
    affected: dict[str, dict] = {}  # checkpoint path -> {via, dataset}
    for record in history.prefixed("checkpoints"):
        meta = _meta(record)
        manifest = meta.get("manifest") or {}
        files = matches(manifest.get("dataset", {}).get("raw_files", []), "sha256", "uri")
        base_dir = _base_checkpoint_dir(manifest.get("base_model", {}).get("path"))
        if files:
            via = "trained on it"
        elif base_dir in affected:
            via = f"starts from {base_dir}, which {affected[base_dir]['via']}"
        else:
            continue
        affected[meta["checkpoint_path"]] = {"via": via, "dataset": manifest["dataset"]["name"]}
        found["checkpoints"].append({**history.event(record), "version": meta.get("version"),
                                     "path": meta["checkpoint_path"], "via": via,
                                     "rows": files[0]["rows"] if files else None})
    for prefix, kind in (("models", "champions"), ("reports", "reports")):
        for record in history.prefixed(prefix):
            meta = _meta(record)
            if meta.get("checkpoint_path") in affected:
                found[kind].append({**history.event(record), "recipe": meta.get("recipe"),
                                    "checkpoint_path": meta["checkpoint_path"],
                                    "dataset": affected[meta["checkpoint_path"]]["dataset"]})
    found["stale"] = _stale(history, found)
    return found


def _stale(history: _History, found: dict) -> list[dict]:
    """Current assets whose latest materialization consumed the file, directly or through an upstream
    one: what must be rebuilt once the file is withdrawn from its landing folder."""
    reasons = {"raw": "its current materialization reads the file",
               "datasets": "its current version holds rows of the file",
               "checkpoints": "its current weights learned from the file",
               "reports": "its current report evaluates such a checkpoint",
               "champions": "it publishes such a checkpoint"}
    stale = {}
    for kind, reason in reasons.items():
        for entry in found[kind]:
            if entry["current"]:
                stale[entry["asset"]] = reason
                if kind != "reports":
                    continue
                # A leaderboard built after this report ranks it; one built before never saw it.
                leaderboard = history.key("reports", "leaderboard", entry["dataset"])
                if (history.latest_id(leaderboard) or 0) > entry["event_id"]:
                    stale.setdefault(leaderboard.to_user_string(), "its current ranking includes such a report")
    return [{"asset": asset, "why": why} for asset, why in stale.items()]


# --- as text ---------------------------------------------------------------------------------

def format_chain(chain: dict, indent: str = "") -> str:
    """The chain as an indented outline, champion first when there is one."""
    lines = []
    if "champion" in chain:
        c = chain["champion"]
        lines += [f"champion {c['asset']}: {c['recipe']} ({c['checkpoint_version']}), {c['decision']}",
                  f"  run {c['run_id']} at {c['materialized_at']}; published at {c['path']}",
                  f"  why: {c['why']}"]
        indent += "  "
    ck = chain["checkpoint"]
    git = ck["git"]
    base = ck["base_model"]
    lines += [
        f"{indent}checkpoint {ck['asset']} version {ck['version']}{'' if ck['current'] else ' (not the latest)'}",
        f"{indent}  run {ck['run_id']} at {ck['materialized_at']}; {ck['path']}",
        f"{indent}  recipe {ck['recipe']} ({ck['method']}), recipe hash {ck['recipe_hash'][:16]}, "
        f"code version {ck['code_version']}",
        f"{indent}  git {git['sha']}" + (" (uncommitted changes)" if git.get("dirty") else ""),
        f"{indent}  libraries " + ", ".join(f"{k} {v}" for k, v in ck["libraries"].items()),
        f"{indent}  base model {base['id']}" + (f" at {base['path']}" if base.get("path") else "")
        + (f", sha256 {base['sha256']}" if base.get("sha256") else ""),
    ]
    if "learning_rate_search" in ck:
        search = ck["learning_rate_search"]
        chosen = next(c for c in search["candidates"] if c["chosen"])
        lines.append(f"{indent}  learning rate {search['chosen_learning_rate']:g} chosen on the validation split "
                     f"({search['selection_metric']}) from " + ", ".join(f"{c['learning_rate']:g}" for c in search["candidates"])
                     + f"; the weights of run {chosen['run_id']}, copied from {chosen['checkpoint_path']}")
    ds = chain["dataset"]
    if "run_id" in ds:
        rows = ds["rows"]
        reasons = ", ".join(f"{k} {v}" for k, v in (ds["quarantine_by_reason"] or {}).items())
        lines += [
            f"{indent}  dataset datasets/{ds['name']} version {ds['version'][:16]}, run {ds['run_id']} at "
            f"{ds['materialized_at']}",
            f"{indent}    rows train {rows['train']} / validation {rows['validation']} / test {rows['test']}; "
            f"quarantined {ds['quarantined']}" + (f" ({reasons})" if reasons else "")
            + f"; duplicates {ds['duplicates']}; cleaning code version {ds['cleaning_code_version'] or ds['code_version']}",
        ]
        if ds["snapshot"]:
            lines.append(f"{indent}    snapshot read: {ds['snapshot']['uri'] or ds['snapshot']['path']}")
    else:
        lines.append(f"{indent}  dataset datasets/{ds['name']} version {ds['version'][:16]}: {ds['note']}")
    lines.append(f"{indent}  raw files ({len(chain['raw_files'])})")
    for f in chain["raw_files"]:
        r = f["rows"]
        lines.append(f"{indent}    {f['uri']}  sha256 {f['sha256']}  records {f['records']}, rows used train "
                     f"{r['train']} / validation {r['validation']} / test {r['test']}")
    ev = chain["evaluation"]
    if ev is None:
        lines.append(f"{indent}  evaluation: none of this checkpoint yet")
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in ev["metrics"].items())
        lines.append(f"{indent}  evaluation {ev['asset']} run {ev['run_id']} at {ev['materialized_at']}: {metrics}")
        for g in ev["gates"]:
            lines.append(f"{indent}    gate {g['name']}: {'pass' if g['passed'] else 'FAIL'} ({g['severity']}) — "
                         f"{g['summary']}")
        for w in ev.get("warnings", []):
            lines.append(f"{indent}    check {w['name']}: {'ok' if w['passed'] else 'WARN'} — {w['summary']}")
    if "base_checkpoint" in chain:
        lines.append(f"{indent}  starts from:")
        lines.append(format_chain(chain["base_checkpoint"], indent + "    "))
    return "\n".join(lines)


def format_raw_file(found: dict, stale: bool) -> str:
    if found["sha256"]:
        lines = [f"raw file sha256 {found['sha256']}" + (f" ({found['uri']})" if found["uri"] else "")]
    else:
        lines = [f"raw file {found['uri']} (not on disk now: matched by its URI, any contents)"]
    sections = (("raw", "read by"), ("datasets", "dataset versions"), ("checkpoints", "checkpoints"),
                ("reports", "reports"), ("champions", "champions"))
    for kind, title in sections:
        lines.append(f"  {title}: {len(found[kind])}")
        for e in found[kind]:
            extra = (f"version {e['version']}" if e.get("version") else "") + (f", {e['via']}" if e.get("via") else "")
            lines.append(f"    {e['asset']}  run {e['run_id']} at {e['materialized_at']}"
                         f"{'  [current]' if e['current'] else ''}  {extra}".rstrip())
    if stale:
        lines.append(f"  must be rebuilt without it: {len(found['stale'])}")
        lines += [f"    {s['asset']}: {s['why']}" for s in found["stale"]]
        if found["stale"]:
            selection = ",".join(s["asset"] for s in found["stale"])
            lines.append(f"  after removing the file: dagster asset materialize --select '{selection}' "
                         "-m ft_assets.definitions")
    return "\n".join(lines)
