"""Lineage records: which raw files (by content hash) fed a dataset, and which code produced a model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import duckdb


def dataset_files(conn: duckdb.DuckDBPyConnection, dataset_name: str, corpora: list[str]) -> list[dict]:
    """Every raw file of the dataset's corpora: URI, sha256, records read, and rows per split.

    Files whose rows were all quarantined or duplicates are listed too, with zero rows per split:
    the model did not learn from them, but they were part of what it was built from.
    """
    files = " UNION ALL ".join(f'SELECT * FROM raw."{c}__files"' for c in corpora)
    rows = conn.sql(f"""
        SELECT f.source_uri, f.file_sha256, f.rows + f.rejects,
               count(d.row_id) FILTER (WHERE d.split = 'train'),
               count(d.row_id) FILTER (WHERE d.split = 'validation'),
               count(d.row_id) FILTER (WHERE d.split = 'test')
        FROM ({files}) f
        LEFT JOIN datasets."{dataset_name}" d USING (source_uri, file_sha256)
        GROUP BY ALL ORDER BY f.source_uri
    """).fetchall()
    return [
        {"uri": uri, "sha256": sha, "records": n, "rows": {"train": tr, "validation": va, "test": te}}
        for uri, sha, n, tr, va, te in rows
    ]


def git_state(path: Path) -> dict:
    """The commit of the repository holding `path`, and whether its work tree had changes."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha or "unknown", "dirty": bool(status) if status is not None else None}
