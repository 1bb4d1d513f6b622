"""raw/<corpus>: the landing folder's files, row for row, in the warehouse."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from ft_assets.defs.resources import (
    WAREHOUSE_POOL, asset_key, contract_metadata, describe_commit, latest_metadata, project_resource, resource_keys,
    unrecorded_commit,
)
from ft_assets.lib.config import CorpusConfig, ProjectConfig, stable_hash
from ft_assets.lib.ingest.readers import RawCorpus, committed_files, read_corpus, write_raw
from ft_assets.lib.lineage import code_version
from ft_assets.lib.schemas import RAW_ROWS, check
from ft_assets.lib.storage import require_storage_root
from ft_assets.lib.warehouse import Commit


def build_raw_corpus_asset(corpus: CorpusConfig, config: ProjectConfig) -> dg.AssetsDefinition:
    key = asset_key(config, "raw", corpus.name)
    landing = config.corpus_location(corpus)

    @dg.asset(
        key=key,
        group_name="raw",
        kinds={"duckdb"},
        pool=WAREHOUSE_POOL,
        # The corpus settings and the code that parses and validates its files.
        code_version=code_version(stable_hash(corpus.model_dump(mode="json")), "ft_assets.lib.ingest.readers",
                                  "ft_assets.lib.schemas"),
        description=(
            f"Every {corpus.format} file under `{landing}` read into `raw.{corpus.name}` with its source URI, "
            "file sha256 and row number; records that do not parse go to "
            f"`raw.{corpus.name}__rejects` with the line and the parser's message; every file version that "
            f"arrived, changed, moved or was withdrawn is logged in `raw.{corpus.name}__file_log`. "
            "Files are never modified."
        ),
        metadata={"landing": dg.MetadataValue.path(landing), "format": corpus.format},
        check_specs=[dg.AssetCheckSpec("raw_contract", asset=key, blocking=True,
                                       description="the raw rows' contract, checked in DuckDB: exact columns and types, provenance "
                                                   "present, sha256 well-formed, (file, row) unique")],
        required_resource_keys=resource_keys(config, "warehouse"),
    )
    def raw_corpus(context: dg.AssetExecutionContext):
        warehouse: DuckDBResource = project_resource(context, config, "warehouse")
        try:
            require_storage_root(config.root)  # before the landing folder under it is looked for
            raw = read_corpus(corpus, landing)
        except (FileNotFoundError, NotADirectoryError, ValueError) as e:
            raise dg.Failure(description=f"raw/{corpus.name}: {e}") from e
        config.root.mkdir(parents=True, exist_ok=True)
        with raw, warehouse.get_connection() as conn:
            rows, rejects = raw.rows.count_rows(), raw.rejects.count_rows()
            unrecorded = unrecorded_commit(conn, context.instance, key, f"raw.{corpus.name}")
            recorded = None
            if unrecorded is not None:
                recorded = {f["source_uri"]: {"sha256": f["file_sha256"]}
                            for f in latest_metadata(context.instance, key).get("raw_files") or []}
                context.log.warning(_roll_forward_message(corpus.name, unrecorded, committed_files(conn, corpus.name),
                                                          raw, recorded))
            changes = write_raw(conn, corpus.name, raw, context.run_id, unrecorded=unrecorded, recorded_files=recorded)
            failures = check(conn, f"raw.{corpus.name}", RAW_ROWS)
        files = raw.files.to_pylist()
        if rejects:
            context.log.warning(f"raw/{corpus.name}: {rejects} record(s) did not parse; "
                                f"see raw.{corpus.name}__rejects")
        return dg.MaterializeResult(
            metadata={
                "files": len(files),
                "rows": rows,
                "rejects": rejects,
                "bytes": sum(f["bytes"] for f in files),
                "dagster/row_count": rows,
                "file_table": dg.MetadataValue.md(_files_markdown(files)),
                **{f"files_{kind}": len(entries) for kind, entries in changes.items()},
                "file_changes": dg.MetadataValue.json(changes),
                # For `ft-assets audit --raw-file`: which materialization read which file contents.
                "raw_files": dg.MetadataValue.json([{k: f[k] for k in ("source_uri", "file_sha256", "rows", "rejects")}
                                                    for f in files]),
            },
            # The corpus changes exactly when the set of file contents changes.
            data_version=dg.DataVersion(stable_hash(sorted(f["file_sha256"] for f in files))[:16]),
            check_results=[dg.AssetCheckResult(check_name="raw_contract", passed=not failures,
                                               metadata=contract_metadata(failures))],
        )

    return raw_corpus


def _roll_forward_message(name: str, unrecorded: Commit, committed: dict[str, dict], raw: RawCorpus,
                          recorded: dict[str, dict]) -> str:
    """What this run does with raw tables that Dagster never recorded: adopts them (it read the same
    files) or rolls them forward (it read others); either way it records what it read, with its file
    changes counted from the last recorded materialization."""
    reading = {f["source_uri"]: {"sha256": f["file_sha256"]} for f in raw.files.to_pylist()}
    verdict = ("adopted: this run read the same files and records them" if reading == committed else
               f"rolled forward: this run read {len(reading)} file(s), which replace them")
    return (f"raw/{name}: raw.{name} holds {len(committed)} file(s) committed by {describe_commit(unrecorded)}, "
            f"which Dagster never recorded (the run ended between its commit and its materialization); {verdict}, "
            f"with the file changes counted from the last recorded materialization ({len(recorded)} file(s))")


def _files_markdown(files: list[dict]) -> str:
    lines = ["| file | sha256 | bytes | rows | rejects |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {f['source_uri']} | `{f['file_sha256'][:12]}…` | {f['bytes']:,} | {f['rows']:,} | {f['rejects']:,} |"
              for f in files]
    return "\n".join(lines)
