"""Cleaned task datasets, built in DuckDB SQL from the raw tables.

Every raw record ends in exactly one of three tables of the `datasets` schema:
  datasets.<name>               row_id, split, text, label, source_uri, file_sha256, row_number
  datasets.<name>__quarantine   source_uri, file_sha256, row_number, line, text, label, reason, detail
  datasets.<name>__duplicates   row_id, source_uri, file_sha256, row_number, duplicate_of
Rules, in order: unicode NFC and whitespace normalisation; records the parser rejected, empty
texts, over-long texts, missing and unknown labels, and identical texts with different labels go
to quarantine; identical texts after normalisation keep one row, and a text that is in the test
split never also sits in train or validation; the rest is split by a hash of the text, so a text
lands in the same split in every run and on every machine. A fixed `test_corpus` is a benchmark
as published: its own repeated texts all stay in the test split.

By task:
  classification      as above.
  instruction         text is a conversation (chat messages JSON, see ingest); only NFC
                      normalisation (whitespace inside answers matters); a conversation whose last
                      message is not the assistant's is quarantined as no_response, one whose answer
                      is blank as empty_response; identical conversations are duplicates.
  language_modeling   lines keep their inner whitespace (NFC, trailing space trimmed) and their
                      repeats (repetition is part of a text); the split hashes segments of
                      LM_SEGMENT_LINES consecutive lines of a file, so blocks of running text stay together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from ft_assets.lib.config import DatasetConfig
from ft_assets.lib.ingest.readers import FILE_REJECTED
from ft_assets.lib.datasets.redaction import RULES, redact
from ft_assets.lib.warehouse import record_commit

LM_SEGMENT_LINES = 20
# How language modelling reads a split: the lines as they stand in their files.
FILE_ORDER = "source_uri, row_number"

# RE2 `\s` is ASCII only; \p{Z} adds no-break and other unicode spaces, \p{Cc} control characters.
_NORMALISE = {
    "classification": r"trim(regexp_replace(nfc_normalize(coalesce(text, '')), '[\s\p{Z}\p{Cc}]+', ' ', 'g'))",
    "instruction": "nfc_normalize(coalesce(text, ''))",
    "language_modeling": "rtrim(nfc_normalize(coalesce(text, '')))",
}
# The last message of a conversation, for the instruction rules.
_LAST_ROLE = "json_extract_string(text, '$[#-1].role')"
_LAST_CONTENT = "json_extract_string(text, '$[#-1].content')"


@dataclass(frozen=True)
class DatasetSummary:
    version: str
    rows_by_split: dict[str, int]
    label_counts: dict[str, dict[str, int]]  # split -> label -> rows
    quarantine_by_reason: dict[str, int]
    raw_records: int
    clean_rows: int
    quarantined: int
    duplicates: int
    redacted: dict[str, int]  # redaction rule -> rows it changed

    # Files whose raw records do not all reappear as clean, quarantined or duplicate rows.
    unbalanced_files: list[dict]

    @property
    def accounted(self) -> bool:
        return (self.raw_records == self.clean_rows + self.quarantined + self.duplicates
                and not self.unbalanced_files)

    def where_the_rows_went(self) -> str:
        """Where the raw records went, largest share first: "60 empty_text, 3 duplicates"."""
        parts = [f"{rows} {reason}" for reason, rows in sorted(self.quarantine_by_reason.items(),
                                                                key=lambda item: (-item[1], item[0]))]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates")
        return ", ".join(parts) or "the raw corpora hold no records"


def build_dataset(conn: duckdb.DuckDBPyConnection, dataset: DatasetConfig, run_id: str | None = None) -> DatasetSummary:
    """Replaces the dataset's three tables from raw.<corpus> (and raw.<test_corpus>), in one transaction
    that also records `run_id` as their last commit (lineage.commits)."""
    name = dataset.name
    sources = [(dataset.corpus, "main")] + ([(dataset.test_corpus, "test")] if dataset.test_corpus else [])
    rows_union = " UNION ALL ".join(
        f"SELECT *, '{role}' AS role FROM raw.\"{corpus}\"" for corpus, role in sources
    )
    rejects_union = " UNION ALL ".join(f'SELECT * FROM raw."{corpus}__rejects"' for corpus, _ in sources)
    labels = dataset.labels
    test_share = 0.0 if dataset.test_corpus else dataset.test_fraction
    task = dataset.task
    # What the split hash reads: the text, or for language modelling the file segment a line is in.
    split_key = (f"file_sha256 || ':' || (row_number // {LM_SEGMENT_LINES})::VARCHAR"
                 if task == "language_modeling" else "text")

    conn.execute("CREATE SCHEMA IF NOT EXISTS datasets")
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE _normalised AS
            SELECT source_uri, file_sha256, row_number, role,
                   text AS raw_text, label AS raw_label,
                   {_NORMALISE[task]} AS text,
                   nullif(trim(label), '') AS label,
                   substr(sha256(file_sha256 || ':' || row_number::VARCHAR), 1, 16) AS row_id
            FROM ({rows_union})
        """)
        redacted = _redact(conn, dataset.redact)
        conn.execute(f'CREATE OR REPLACE TABLE datasets."{name}__redactions" (rule VARCHAR, rows BIGINT)')
        for rule, rows in redacted.items():
            conn.execute(f'INSERT INTO datasets."{name}__redactions" VALUES (?, ?)', [rule, rows])
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE _checked AS
            SELECT *,
                   CASE WHEN contains(coalesce(raw_text, ''), chr(0)) THEN 'nul_byte'
                        WHEN trim(text) = '' THEN 'empty_text'
                        WHEN {task == "instruction"} AND {_LAST_ROLE} <> 'assistant' THEN 'no_response'
                        WHEN {task == "instruction"} AND trim({_LAST_CONTENT}) = '' THEN 'empty_response'
                        WHEN length(text) > {dataset.max_chars} THEN 'too_long'
                        WHEN {task == "classification"} AND label IS NULL THEN 'missing_label'
                        WHEN ? AND NOT list_contains(?, label) THEN 'unknown_label'
                   END AS reason,
                   CASE WHEN contains(coalesce(raw_text, ''), chr(0))
                            THEN 'NUL byte at character ' || strpos(raw_text, chr(0))::VARCHAR || ': a corrupt or binary record'
                        WHEN {task == "instruction"} AND {_LAST_ROLE} <> 'assistant'
                            THEN 'the conversation ends with a ' || {_LAST_ROLE} || ' message, not an answer'
                        WHEN length(text) > {dataset.max_chars}
                            THEN length(text)::VARCHAR || ' characters, limit {dataset.max_chars}'
                        WHEN label IS NOT NULL AND ? AND NOT list_contains(?, label)
                            THEN 'label ' || label || ' is not one of the dataset labels'
                   END AS detail
            FROM _normalised
        """, [labels is not None, labels or [], labels is not None, labels or []])
        # Identical texts with different labels: no way to tell which label is right.
        conn.execute("""
            CREATE OR REPLACE TEMP TABLE _conflicts AS
            SELECT text, string_agg(DISTINCT label, ', ' ORDER BY label) AS labels
            FROM _checked WHERE reason IS NULL GROUP BY text HAVING count(DISTINCT label) > 1
        """)
        # Repeated lines are part of running text: language modelling keeps them all.
        dedupe = task != "language_modeling"
        conn.execute(f"""
            CREATE OR REPLACE TABLE datasets."{name}__quarantine" AS
            SELECT source_uri, file_sha256, NULL::BIGINT AS row_number, line, raw_line AS text,
                   NULL::VARCHAR AS label,
                   -- a whole file: unusable, or never read (a symlink out of the landing folder)
                   CASE WHEN starts_with(error, '{FILE_REJECTED}') THEN 'rejected_file' ELSE 'unparseable' END AS reason,
                   error AS detail
            FROM ({rejects_union})
            UNION ALL
            SELECT source_uri, file_sha256, row_number, NULL, raw_text, raw_label, reason, detail
            FROM _checked WHERE reason IS NOT NULL
            UNION ALL
            SELECT c.source_uri, c.file_sha256, c.row_number, NULL, c.raw_text, c.raw_label,
                   'conflicting_labels', 'the same text is labelled ' || k.labels
            FROM _checked c JOIN _conflicts k USING (text) WHERE c.reason IS NULL
            ORDER BY source_uri, coalesce(row_number, 0), line
        """)
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE _ranked AS
            SELECT *,
                   first_value(row_id) OVER w AS first_id,
                   row_number() OVER w AS rank_in_text
            FROM _checked
            WHERE reason IS NULL AND text NOT IN (SELECT text FROM _conflicts)
            WINDOW w AS (PARTITION BY CASE WHEN {dedupe} THEN text ELSE row_id END
                         ORDER BY role = 'test' DESC, source_uri, row_number)
        """)
        conn.execute(f"""
            CREATE OR REPLACE TABLE datasets."{name}__duplicates" AS
            SELECT row_id, source_uri, file_sha256, row_number, first_id AS duplicate_of
            FROM _ranked WHERE rank_in_text > 1 AND role <> 'test' ORDER BY source_uri, row_number
        """)
        conn.execute(f"""
            CREATE OR REPLACE TABLE datasets."{name}" AS
            WITH kept AS (
                SELECT *, ('0x' || substr(md5(? || {split_key}), 1, 8))::BIGINT / 4294967296.0 AS u
                FROM _ranked WHERE rank_in_text = 1 OR role = 'test'
            )
            SELECT row_id,
                   CASE WHEN role = 'test' OR u < {test_share} THEN 'test'
                        WHEN u < {test_share + dataset.validation_fraction} THEN 'validation'
                        ELSE 'train' END AS split,
                   text, label, source_uri, file_sha256, row_number
            FROM kept ORDER BY source_uri, row_number
        """, [dataset.split_salt])
        record_commit(conn, f"datasets.{name}", run_id)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return summarize_dataset(conn, dataset)


def _redact(conn: duckdb.DuckDBPyConnection, rules: list[str]) -> dict[str, int]:
    """Applies the dataset's redaction rules to _normalised.text; rows changed per rule."""
    from duckdb import sqltypes

    counts = {}
    for rule in (r for r in RULES if r in rules):
        function = f"ft_redact_{rule}"
        conn.create_function(function, _redactor(rule), [sqltypes.VARCHAR], sqltypes.VARCHAR)
        try:
            counts[rule] = conn.execute(
                f"UPDATE _normalised SET text = {function}(text) WHERE text IS NOT NULL AND {function}(text) <> text"
            ).fetchall()[0][0]
        finally:
            conn.remove_function(function)
    return counts


def _redactor(rule: str):
    # DuckDB reads the function's parameters: it must take exactly the text.
    return lambda text: redact(text, rule)


def summarize_dataset(conn: duckdb.DuckDBPyConnection, dataset: DatasetConfig) -> DatasetSummary:
    name = dataset.name
    corpora = [dataset.corpus] + ([dataset.test_corpus] if dataset.test_corpus else [])
    raw_records = sum(
        conn.sql(
            f'SELECT (SELECT count(*) FROM raw."{c}") + (SELECT count(*) FROM raw."{c}__rejects")'
        ).fetchall()[0][0]
        for c in corpora
    )
    rows_by_split = dict(conn.sql(f'SELECT split, count(*) FROM datasets."{name}" GROUP BY split ORDER BY split').fetchall())
    label_counts: dict[str, dict[str, int]] = {}
    for split, label, n in conn.sql(
        f'SELECT split, label, count(*) FROM datasets."{name}" GROUP BY ALL ORDER BY split, label'
    ).fetchall():
        label_counts.setdefault(split, {})[label] = n
    quarantine = dict(conn.sql(
        f'SELECT reason, count(*) FROM datasets."{name}__quarantine" GROUP BY reason ORDER BY reason'
    ).fetchall())
    duplicates = conn.sql(f'SELECT count(*) FROM datasets."{name}__duplicates"').fetchall()[0][0]
    raw_union = " UNION ALL ".join(f'SELECT source_uri FROM raw."{c}" UNION ALL SELECT source_uri FROM raw."{c}__rejects"'
                                   for c in corpora)
    unbalanced = conn.sql(f"""
        WITH raw AS (SELECT source_uri, count(*) AS n FROM ({raw_union}) GROUP BY 1),
             placed AS (SELECT source_uri, count(*) AS n FROM (
                 SELECT source_uri FROM datasets."{name}" UNION ALL
                 SELECT source_uri FROM datasets."{name}__quarantine" UNION ALL
                 SELECT source_uri FROM datasets."{name}__duplicates") GROUP BY 1)
        SELECT source_uri, coalesce(raw.n, 0), coalesce(placed.n, 0)
        FROM raw FULL JOIN placed USING (source_uri)
        WHERE coalesce(raw.n, 0) <> coalesce(placed.n, 0) ORDER BY source_uri
    """).fetchall()
    return DatasetSummary(
        version=content_version(conn, f'datasets."{name}"'),
        rows_by_split=rows_by_split,
        label_counts=label_counts,
        quarantine_by_reason=quarantine,
        raw_records=raw_records,
        clean_rows=sum(rows_by_split.values()),
        quarantined=sum(quarantine.values()),
        duplicates=duplicates,
        redacted=dict(conn.sql(f'SELECT rule, rows FROM datasets."{name}__redactions" ORDER BY rule').fetchall()),
        unbalanced_files=[{"source_uri": uri, "raw_records": n_raw, "placed": n_placed}
                          for uri, n_raw, n_placed in unbalanced],
    )


def content_version(conn: duckdb.DuckDBPyConnection, rows: str) -> str:
    """The dataset version: a content hash of what a trainer sees (any change to a row, label or split
    changes it), over `rows`, a relation with row_id, split, label and text: the warehouse table, or a
    snapshot's parquet files (read_parquet([...]))."""
    return conn.sql(
        f"""SELECT coalesce(sha256(string_agg(row_id || ':' || split || ':' || coalesce(label, '') || ':' || md5(text), chr(10)
                                              ORDER BY row_id)), sha256(''))
            FROM {rows}"""
    ).fetchall()[0][0]


def dataset_labels(conn: duckdb.DuckDBPyConnection, dataset: DatasetConfig) -> list[str]:
    """The label set in classifier output order: as declared, else every label in the clean rows, sorted
    ([] for the causal-LM tasks, which have no labels)."""
    if dataset.task != "classification":
        return []
    if dataset.labels is not None:
        return list(dataset.labels)
    return [r[0] for r in conn.sql(f'SELECT DISTINCT label FROM datasets."{dataset.name}" ORDER BY 1').fetchall()]


def read_split(conn: duckdb.DuckDBPyConnection, dataset_name: str, split: str, *, in_file_order: bool = False) -> pa.Table:
    """One split as Arrow (row_id, text, label), in a fixed order: by row_id, or as the lines stand in
    their files (language modelling reads running text)."""
    order = FILE_ORDER if in_file_order else "row_id"
    return conn.sql(
        f'SELECT row_id, text, label FROM datasets."{dataset_name}" WHERE split = ? ORDER BY {order}', params=[split]
    ).to_arrow_table()


def quarantined(conn: duckdb.DuckDBPyConnection, dataset_name: str, *, reason: str | None = None,
                per_reason: int | None = None) -> list[dict]:
    """Quarantined rows (file, row or line, reason, detail, text), by reason then file order;
    `per_reason` keeps the first N of each reason (a sample for the UI)."""
    rows = conn.sql(f"""
        SELECT source_uri, coalesce(row_number, line) AS position, reason, detail, text,
               row_number() OVER (PARTITION BY reason ORDER BY source_uri, coalesce(row_number, line)) AS nth
        FROM datasets."{dataset_name}__quarantine"
        WHERE ? IS NULL OR reason = ?
        ORDER BY reason, source_uri, position
    """, params=[reason, reason]).fetchall()
    return [{"source_uri": uri, "position": position, "reason": why, "detail": detail, "text": text}
            for uri, position, why, detail, text, nth in rows if per_reason is None or nth <= per_reason]


def quarantine_markdown(by_reason: dict[str, int], sample: list[dict]) -> str:
    """Counts by reason, then a sample of rows: what the UI shows on the dataset."""
    if not by_reason:
        return "Nothing quarantined."
    lines = ["| reason | rows |", "| --- | ---: |", *(f"| {r} | {n:,} |" for r, n in by_reason.items()), "",
             "| reason | file | row/line | detail | text |", "| --- | --- | ---: | --- | --- |"]
    for row in sample:
        text = (row["text"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['reason']} | {row['source_uri'].rsplit('/', 1)[-1]} | {row['position'] or ''} | "
                     f"{(row['detail'] or '').replace('|', '/')} | {text[:80] + ('…' if len(text) > 80 else '')} |")
    return "\n".join(lines)


def read_table(conn: duckdb.DuckDBPyConnection, table: str):
    """A whole table as a pandas DataFrame, e.g. for contract checks."""
    schema, name = table.split(".", 1)
    return conn.sql(f'SELECT * FROM {schema}."{name}"').df()
