"""Dataset snapshots: each dataset version as immutable files, which is what training and evaluation read.

    <root>/datasets/<name>/<version[:16]>/
        train.parquet validation.parquet test.parquet   every clean row of the split, with its provenance
        dataset.json                                    version, rows per split, labels, raw files, config hash

The warehouse tables hold the latest build and change with every run; a snapshot never changes once
written. The dataset step writes its snapshot (and publishes it to an s3:// root, dataset.json
last) before Dagster records the materialization that names it, so a materialization never names
a snapshot that is incomplete, and a step killed before the record leaves the previous snapshot
what it was. A reader checks that the rows still hash to the version the snapshot records (the
same content_version as the warehouse's), so rows and version cannot disagree.

A split's rows are in the order training reads them: by row_id, or for language modelling as the
lines stand in their files (running text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ft_assets.lib.datasets.cleaning import FILE_ORDER, content_version
from ft_assets.lib.storage import atomic_directory

SNAPSHOT_FILE = "dataset.json"  # written last: a folder (or an s3:// copy) that has it is complete
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Snapshot:
    folder: Path  # a local folder holding the files
    uri: str | None  # its s3:// copy, if the storage root is one
    record: dict  # dataset.json

    @property
    def version(self) -> str:
        return self.record["version"]

    def rows(self, split: str) -> int:
        return self.record["rows"][split]

    def split_path(self, split: str) -> Path:
        return self.folder / f"{split}.parquet"

    def split_uri(self, split: str) -> str | None:
        return f"{self.uri}/{split}.parquet" if self.uri else None

    def read_split(self, split: str) -> pa.Table:
        """One split as Arrow (row_id, text, label), in training order."""
        return pq.read_table(self.split_path(split), columns=["row_id", "text", "label"])


def write_snapshot(conn: duckdb.DuckDBPyConnection, dataset_name: str, folder: Path, record: dict, *,
                   in_file_order: bool = False) -> None:
    """Writes datasets.<name> as a snapshot folder that appears whole or not at all, with `record` (at
    least the version) as its dataset.json. A snapshot with the same record is kept as it is (a
    version's rows are the same whoever wrote them); one whose record differs (the declared label
    order, say) is replaced whole, as is an export from before snapshots had a dataset.json."""
    existing = folder / SNAPSHOT_FILE
    if existing.is_file() and json.loads(existing.read_text()) == record:
        return
    order = FILE_ORDER if in_file_order else "row_id"
    with atomic_directory(folder, replace=True) as staging:
        for split in SPLITS:
            # DuckDB writes the split itself: no split passes through Python, whatever its size.
            target = str(staging / f"{split}.parquet").replace("'", "''")
            conn.execute(f"""COPY (SELECT * FROM datasets."{dataset_name}" WHERE split = '{split}' ORDER BY {order})
                             TO '{target}' (FORMAT parquet)""")
        (staging / SNAPSHOT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def open_snapshot(folder: Path, uri: str | None = None, *, version: str | None = None) -> Snapshot:
    """The snapshot at `folder`, fetched whole from its s3:// copy `uri` when this machine lacks it,
    after checking that its rows hash to the version it records (and to `version`, when given: the
    one a materialization names).

    Raises:
        FileNotFoundError: neither the folder nor its s3:// copy is complete.
        ValueError: the rows do not hash to the recorded version, or it is not `version`.
    """
    if not (folder / SNAPSHOT_FILE).is_file():
        if uri is None:
            raise FileNotFoundError(f"dataset snapshot {folder} is missing or incomplete (no {SNAPSHOT_FILE})")
        _fetch(uri, folder)
    record = json.loads((folder / SNAPSHOT_FILE).read_text())
    with duckdb.connect() as conn:
        conn.read_parquet([str(folder / f"{split}.parquet") for split in SPLITS]).create_view("snapshot_rows")
        found = content_version(conn, "snapshot_rows")
    if found != record["version"]:
        raise ValueError(f"dataset snapshot {folder}: its rows hash to version {found[:16]}, not to the "
                         f"{record['version'][:16]} its {SNAPSHOT_FILE} records: the files were changed after "
                         "they were written; delete the folder and materialize the dataset again")
    if version is not None and version != record["version"]:
        raise ValueError(f"dataset snapshot {folder} holds version {record['version'][:16]}, not the "
                         f"{version[:16]} its materialization names")
    return Snapshot(folder=folder, uri=uri, record=record)


def _fetch(uri: str, folder: Path) -> None:
    """Downloads the s3:// copy into `folder`, whole or not at all; dataset.json first, since a copy
    without it is still being published."""
    from ft_assets.lib.storage import s3_filesystem

    fs = s3_filesystem()
    remote = uri.removeprefix("s3://").rstrip("/")
    if not fs.exists(f"{remote}/{SNAPSHOT_FILE}"):
        raise FileNotFoundError(f"dataset snapshot {uri} is missing or incomplete (no {SNAPSHOT_FILE})")
    names = [SNAPSHOT_FILE] + [f"{split}.parquet" for split in SPLITS]
    with atomic_directory(folder, replace=True) as staging:
        fs.get([f"{remote}/{name}" for name in names], [str(staging / name) for name in names])
