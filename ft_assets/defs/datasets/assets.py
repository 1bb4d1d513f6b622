"""datasets/<dataset>: cleaned, deduplicated, split task data, with its contracts as asset checks."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from ft_assets.defs.automation import rebuild_after_upstream
from ft_assets.defs.resources import (
    WAREHOUSE_POOL, asset_key, contract_metadata, describe_commit, latest_metadata, project_resource, resource_keys,
    unrecorded_commit,
)
from ft_assets.lib.storage import publish, remove_partials
from ft_assets.lib.datasets.cleaning import (
    DatasetSummary, build_dataset, content_version, dataset_labels, label_variants, quarantine_markdown, quarantined,
)
from ft_assets.lib.datasets.snapshot import SNAPSHOT_FILE, SPLITS, write_snapshot
from ft_assets.lib.warehouse import Commit
from ft_assets.lib.config import DatasetConfig, ProjectConfig
from ft_assets.lib.lineage import code_version, dataset_files, source_hash
from ft_assets.lib.schemas import check, clean_rows_contract

# The code that cleans and validates rows: part of the code_version, and recorded for audits.
CLEANING_CODE = ("ft_assets.lib.datasets.cleaning", "ft_assets.lib.schemas")


def build_dataset_asset(dataset: DatasetConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    key = asset_key(config, "datasets", dataset.name)
    corpora = [c.name for c in config.dataset_corpora(dataset)]
    split_rule = (f"test = corpus `{dataset.test_corpus}`" if dataset.test_corpus
                  else f"test {dataset.test_fraction:.0%}") + f", validation {dataset.validation_fraction:.0%}"
    if dataset.task == "preference":
        split_rule += ", by prompt: a prompt's pairs share a split" + (
            ", and a pair on a test prompt is quarantined" if dataset.test_corpus else "")
    classification = dataset.task == "classification"
    cleaning_source = source_hash(*CLEANING_CODE)
    checks = [
        # Blocking: nothing downstream trains on data that broke its contract or lost rows.
        dg.AssetCheckSpec("contract", asset=key, blocking=True,
                          description="the clean rows' contract, checked in DuckDB: exact columns and types, "
                                      "the dataset's labels and length limit, splits, unique ids, no repeated text"),
        dg.AssetCheckSpec("row_accounting", asset=key, blocking=True,
                          description="raw records = clean + quarantined + duplicates, in total and per file: "
                                      "nothing is lost"),
    ]
    if classification:
        checks += [
            # A one-class classifier learns nothing and reports only that it does not beat the majority.
            dg.AssetCheckSpec("two_labels", asset=key, blocking=True,
                              description="the train split has rows of at least two labels"),
            dg.AssetCheckSpec("label_coverage", asset=key,
                              description="every label has rows in the train and the test split"),
            dg.AssetCheckSpec("label_variants", asset=key,
                              description="no two labels differ only by case, whitespace or number format "
                                          "(`Billing` / `billing`, `1` / `1.0` / `01`): each would be a class"),
        ]

    @dg.asset(
        key=key,
        group_name="datasets",
        kinds={"duckdb"},
        pool=WAREHOUSE_POOL,
        deps=[asset_key(config, "raw", c) for c in corpora],
        code_version=code_version(config.dataset_hash(dataset), *CLEANING_CODE),
        automation_condition=rebuild_after_upstream(),
        description=(
            f"{dataset.task.replace('_', ' ').capitalize()} dataset `datasets.{dataset.name}` from "
            f"{', '.join(corpora)}: unicode normalised; empty, over-long ({dataset.max_chars} chars), "
            + {"classification": "mislabelled", "preference": "unpaired (an answer missing, blank or the same as "
               "the other)"}.get(dataset.task, "unanswered") + " rows quarantined with a reason in "
            f"`datasets.{dataset.name}__quarantine`, duplicates dropped into `datasets.{dataset.name}__duplicates`, "
            f"hash-split ({split_rule}); each version written whole, before it is recorded, as a snapshot "
            f"(train/validation/test parquet and dataset.json) to "
            f"`{config.remote_root or config.root}/datasets/{dataset.name}/<version>/`: what training and "
            "evaluation read."
        ),
        check_specs=checks,
        required_resource_keys=resource_keys(config, "warehouse"),
    )
    def cleaned_dataset(context: dg.AssetExecutionContext):
        warehouse: DuckDBResource = project_resource(context, config, "warehouse")
        snapshots = config.root / "datasets" / dataset.name
        for partial in remove_partials(snapshots):
            context.log.warning(f"datasets/{dataset.name}: removed {partial}, a snapshot left half-written by an "
                                "interrupted run")
        with warehouse.get_connection() as conn:
            _require_recorded_raw(context, conn, config, dataset.name, corpora)
            unrecorded = unrecorded_commit(conn, context.instance, key, f"datasets.{dataset.name}")
            # What the warehouse holds that Dagster never recorded, to say below what became of it.
            unrecorded_version = content_version(conn, f'datasets."{dataset.name}"') if unrecorded else None
            summary = build_dataset(conn, dataset, context.run_id)
            if unrecorded is not None:
                context.log.warning(_roll_forward_message(dataset.name, unrecorded, unrecorded_version, summary.version))
            if summary.clean_rows == 0:
                raise dg.Failure(
                    f"datasets/{dataset.name}: 0 clean rows of {summary.raw_records} raw records: "
                    f"{summary.where_the_rows_went()}. The quarantined rows and their reasons are in "
                    f"datasets.{dataset.name}__quarantine (`ft-assets quarantine {dataset.name}`).")
            failures = check(conn, f"datasets.{dataset.name}", clean_rows_contract(dataset))
            labels = dataset_labels(conn, dataset)
            raw_files = dataset_files(conn, dataset.name, corpora)
            quarantine_sample = quarantined(conn, dataset.name, per_reason=3)
            # Complete (and published) before Dagster records the materialization that names it.
            export_dir = snapshots / summary.version[:16]
            write_snapshot(conn, dataset.name, export_dir, {
                "dataset": dataset.name, "version": summary.version,
                "rows": {split: summary.rows_by_split.get(split, 0) for split in SPLITS},
                "labels": labels, "raw_files": raw_files, "config_hash": config.dataset_hash(dataset),
            }, in_file_order=dataset.task == "language_modeling")
        uncovered = [f"{label} has no {split} rows" for label in labels for split in ("train", "test")
                     if not summary.label_counts.get(split, {}).get(label)]
        trained_labels = sorted(label for label, rows in summary.label_counts.get("train", {}).items() if rows)
        two_labels = len(trained_labels) >= 2
        clean_labels = {label for counts in summary.label_counts.values() for label in counts}
        variants = label_variants(clean_labels) if classification else []  # causal rows have no label
        label_results = [
            dg.AssetCheckResult(
                check_name="two_labels", passed=two_labels,
                description=None if two_labels else
                f"the train split has rows of {len(trained_labels)} label(s) only ({', '.join(trained_labels)}): "
                "a classifier needs two or more",
                metadata={"train_labels": dg.MetadataValue.json(trained_labels)},
            ),
            dg.AssetCheckResult(
                check_name="label_coverage", passed=not uncovered, severity=dg.AssetCheckSeverity.WARN,
                metadata={"missing": dg.MetadataValue.md("\n".join(f"- {u}" for u in uncovered) or "none")},
            ),
            dg.AssetCheckResult(
                check_name="label_variants", passed=not variants, severity=dg.AssetCheckSeverity.WARN,
                description=None if not variants else _variants_message(dataset.name, variants),
                metadata={"variants": dg.MetadataValue.json(variants)},
            ),
        ] if classification else []
        return dg.MaterializeResult(
            metadata={
                "dataset_version": summary.version,
                "dagster/row_count": summary.clean_rows,
                **{f"rows_{split}": summary.rows_by_split.get(split, 0) for split in ("train", "validation", "test")},
                "quarantined": summary.quarantined,
                "duplicates": summary.duplicates,
                "quarantine_by_reason": dg.MetadataValue.json(summary.quarantine_by_reason),
                "quarantine_report": dg.MetadataValue.md(
                    quarantine_markdown(summary.quarantine_by_reason, quarantine_sample)),
                **{f"redacted_{rule}": rows for rule, rows in summary.redacted.items()},
                "raw_files": dg.MetadataValue.json(raw_files),
                "export_path": dg.MetadataValue.path(str(export_dir)),
                **publish(config, export_dir, last=SNAPSHOT_FILE),
                "raw_file_changes": dg.MetadataValue.md(_file_changes(context.instance, key, raw_files)),
                "cleaning_code_version": cleaning_source,
                "dataset_config_hash": config.dataset_hash(dataset),
                **({"label_distribution": dg.MetadataValue.md(_label_markdown(summary, labels))}
                   if classification else {}),
            },
            data_version=dg.DataVersion(summary.version[:16]),
            check_results=[
                dg.AssetCheckResult(check_name="contract", passed=not failures, metadata=contract_metadata(failures)),
                dg.AssetCheckResult(
                    check_name="row_accounting", passed=summary.accounted,
                    metadata={"raw_records": summary.raw_records, "clean": summary.clean_rows,
                              "quarantined": summary.quarantined, "duplicates": summary.duplicates,
                              "unbalanced_files": dg.MetadataValue.json(summary.unbalanced_files)},
                ),
                *label_results,
            ],
        )

    return cleaned_dataset


def _variants_message(name: str, variants: list[list[str]]) -> str:
    groups = "; ".join(" / ".join(repr(label) for label in group) for group in variants)
    return (f"datasets/{name}: labels that differ only by case, whitespace or number format are separate classes: "
            f"{groups}. If each group is one class, correct the raw files, or declare the dataset's `labels:` "
            "in the project YAML: rows whose label is not one of them are quarantined as unknown_label")


def _require_recorded_raw(context: dg.AssetExecutionContext, conn, config: ProjectConfig, name: str,
                          corpora: list[str]) -> None:
    """Fails when a raw table holds content Dagster never recorded: a dataset built from it would name,
    as its upstream, a raw materialization that does not describe its rows."""
    for corpus in corpora:
        unrecorded = unrecorded_commit(conn, context.instance, asset_key(config, "raw", corpus), f"raw.{corpus}")
        if unrecorded is not None:
            raise dg.Failure(
                f"datasets/{name}: raw.{corpus} holds content committed by {describe_commit(unrecorded)}, which "
                f"Dagster never recorded (the run ended between its commit and its materialization). Materialize "
                f"raw/{corpus} first: it adopts that content or rolls it forward, and records it.")


def _roll_forward_message(name: str, unrecorded: Commit, unrecorded_version: str, version: str) -> str:
    verdict = ("adopted: this run built the same version and records it" if version == unrecorded_version else
               f"rolled forward: this run built version {version[:16]} from the raw tables and records that")
    return (f"datasets/{name}: datasets.{name} held version {unrecorded_version[:16]}, committed by "
            f"{describe_commit(unrecorded)}, which Dagster never recorded (the run ended between its commit "
            f"and its materialization); {verdict}")


def _file_changes(instance: dg.DagsterInstance, key: dg.AssetKey, raw_files: list[dict]) -> str:
    """Which file contents this build added or dropped against the previous one: why an automated
    rebuild happened, on the materialization itself."""
    previous = latest_metadata(instance, key).get("raw_files")
    if previous is None:
        return "first build with its raw files recorded"
    before = {(f["uri"], f["sha256"]) for f in previous}
    now = {(f["uri"], f["sha256"]) for f in raw_files}
    lines = [f"- {kind} {uri} (`{sha[:12]}`)" for kind, files in (("added", now - before), ("dropped", before - now))
             for uri, sha in sorted(files)]
    return "\n".join(lines) or "the same raw files as the previous build"


def _label_markdown(summary: DatasetSummary, labels: list[str]) -> str:
    splits = ("train", "validation", "test")
    lines = ["| label | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(str(summary.label_counts.get(s, {}).get(label, 0)) for s in splits) + " |")
    return "\n".join(lines)
