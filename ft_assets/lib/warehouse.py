"""The warehouse's own record of which run last committed each table: lineage.commits (table_name,
run_id, committed_at), one row per table, written in the transaction that replaces that table.

A step commits its tables first and Dagster records the materialization after, so a process
killed between the two leaves the warehouse ahead of Dagster's record. The row tells the next
step exactly that: the run that committed the content is not the run of the latest materialization.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

COMMITS = "lineage.commits"


@dataclass(frozen=True)
class Commit:
    table_name: str
    run_id: str | None  # None: written outside a Dagster run (a script, a test)
    committed_at: datetime


def record_commit(conn: duckdb.DuckDBPyConnection, table_name: str, run_id: str | None) -> None:
    """Notes that `run_id` replaced `table_name`; call it inside the transaction that does."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS lineage")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {COMMITS} "
                 "(table_name VARCHAR PRIMARY KEY, run_id VARCHAR, committed_at TIMESTAMPTZ)")
    conn.execute(f"INSERT OR REPLACE INTO {COMMITS} VALUES (?, ?, now())", [table_name, run_id])


def last_commit(conn: duckdb.DuckDBPyConnection, table_name: str) -> Commit | None:
    """Who last replaced `table_name`; None for a warehouse written before commits were recorded."""
    if not table_exists(conn, COMMITS):
        return None
    row = conn.sql(f"SELECT table_name, run_id, committed_at FROM {COMMITS} WHERE table_name = ?",
                   params=[table_name]).fetchall()
    return Commit(*row[0]) if row else None


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether `schema.name` exists (the name unquoted: raw.tickets__files)."""
    schema, name = table.split(".", 1)
    return conn.sql("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                    params=[schema, name]).fetchall()[0][0] > 0
