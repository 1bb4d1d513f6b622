"""Cleaned task datasets, built in DuckDB SQL from the raw tables.

Every raw record ends in exactly one of three tables of the `datasets` schema:
  datasets.<name>               row_id, split, text, label, source_uri, file_sha256, row_number
  datasets.<name>__quarantine   source_uri, file_sha256, row_number, line, text, label, reason, detail
  datasets.<name>__duplicates   row_id, source_uri, file_sha256, row_number, duplicate_of
Rules, in order: unicode NFC and whitespace normalisation (of labels too: see _LABEL); records the
parser rejected, fields of the wrong type (an object or list where text belongs), empty texts,
over-long texts, missing and unknown labels, and identical texts with different labels go to
quarantine; identical texts after normalisation keep one row, and a text that is in the test
split never also sits in train or validation; the rest is split by a hash of the text, so a text
lands in the same split in every run and on every machine. A fixed `test_corpus` is a benchmark
as published: its own repeated texts all stay in the test split.

By task:
  classification      as above.
  instruction         text is a conversation (chat messages JSON, see ingest); only NFC
                      normalisation (whitespace inside answers matters); a NUL in a message's content
                      is nul_byte, with the message named; a conversation whose last
                      message is not the assistant's is quarantined as no_response, one whose answer
                      is blank as empty_response; identical conversations are duplicates.
  language_modeling   lines keep their inner whitespace (NFC, trailing space trimmed) and their
                      repeats (repetition is part of a text); the split hashes segments of
                      LM_SEGMENT_LINES consecutive lines of a file, so blocks of running text stay together.
  preference          text is a pair (JSON {"prompt": [messages], "chosen", "rejected"}, see ingest);
                      only NFC normalisation, as instruction. Quarantined, each with a detail naming
                      the field: a NUL in any part (nul_byte), a prompt whose user message is blank
                      or absent (empty_prompt), a null answer (missing_answer), a blank one
                      (empty_answer), answers that are the same once trimmed (identical_answers).
                      Identical pairs (prompt, chosen and rejected) are duplicates. The split hashes
                      the prompt (expressions.prompt_key: its messages, whitespace aside), so all
                      pairs of one prompt share a split; with a fixed
                      test_corpus, a pair whose prompt is also a test prompt is quarantined as
                      prompt_in_test, so no prompt is on both sides.
Redaction rewrites the texts of the JSON tasks (instruction, preference) inside their JSON strings,
so the text stays valid JSON whatever the placeholder lands next to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from ft_assets.lib.config import DatasetConfig
from ft_assets.lib.datasets.expressions import is_blank, prompt_key, stripped, words
from ft_assets.lib.ingest.readers import FILE_REJECTED, WRONG_TYPE
from ft_assets.lib.datasets.redaction import RULES, redact
from ft_assets.lib.warehouse import record_commit

LM_SEGMENT_LINES = 20
# How language modelling reads a split: the lines as they stand in their files.
FILE_ORDER = "source_uri, row_number"

_NORMALISE = {
    "classification": words("coalesce(text, '')"),
    "instruction": "nfc_normalize(coalesce(text, ''))",
    "language_modeling": "rtrim(nfc_normalize(coalesce(text, '')))",
    "preference": "nfc_normalize(coalesce(text, ''))",
}
# The tasks whose text is JSON (a conversation, a preference pair).
JSON_TASKS = ("instruction", "preference")
# A label is normalised as a classification text is: `billing\t`, `\u00a0billing` and `billing` are one
# label; blank is no label.
_LABEL = f"nullif({words('label')}, '')"
# The last message of a conversation, for the instruction rules.
_LAST_ROLE = "json_extract_string(text, '$[#-1].role')"
_LAST_CONTENT = "json_extract_string(text, '$[#-1].content')"
# The position (from 1) of the first message of a conversation whose content holds a NUL, else null:
# the JSON escapes it (\u0000), so the decoded contents are looked at.
_MESSAGE_NUL = ("list_position(list_transform(json_extract_string(text, '$[*].content'), "
                "lambda m: contains(coalesce(m, ''), chr(0))), true)")
# A preference pair's parts, for the preference rules: the answers (null when missing), the prompt's
# contents run together and its last message, the user's.
_CHOSEN = "json_extract_string(text, '$.chosen')"
_REJECTED = "json_extract_string(text, '$.rejected')"
_PROMPT_TEXT = "array_to_string(json_extract_string(text, '$.prompt[*].content'), '')"
_PROMPT_LAST = "json_extract_string(text, '$.prompt[#-1].content')"


def _has_nul(column: str) -> str:
    return f"contains(coalesce({column}, ''), chr(0))"


_PAIR_NUL = f"({_has_nul(_PROMPT_TEXT)} OR {_has_nul(_CHOSEN)} OR {_has_nul(_REJECTED)})"


def _which(chosen: str, rejected: str) -> str:
    """SQL naming the answer a rule is about: 'chosen', 'rejected' or both, from their two conditions."""
    return (f"CASE WHEN ({chosen}) AND ({rejected}) THEN 'chosen and rejected are' "
            f"WHEN {chosen} THEN 'chosen is' ELSE 'rejected is' END")


# Each preference reason's detail, by the reason the row got (`reason`, named earlier in the same SELECT).
_PAIR_DETAIL = f"""CASE reason
    WHEN 'nul_byte' THEN 'NUL byte in ' || CASE WHEN {_has_nul(_CHOSEN)} THEN 'chosen'
                                                WHEN {_has_nul(_REJECTED)} THEN 'rejected' ELSE 'the prompt' END
                         || ': a corrupt or binary record'
    WHEN 'empty_prompt' THEN CASE WHEN {_PROMPT_LAST} IS NULL THEN 'prompt: it has no message'
                                  ELSE 'prompt: the user''s message, which the answers reply to, is blank' END
    WHEN 'missing_answer' THEN {_which(f"{_CHOSEN} IS NULL", f"{_REJECTED} IS NULL")} || ' missing'
    WHEN 'empty_answer' THEN {_which(is_blank(_CHOSEN), is_blank(_REJECTED))} || ' blank'
    WHEN 'identical_answers' THEN 'chosen and rejected are the same answer (after trimming whitespace)'
END"""


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
    files_union = " UNION ALL ".join(f'SELECT source_uri, file_sha256 FROM raw."{corpus}__files"' for corpus, _ in sources)
    labels = dataset.labels
    test_share = 0.0 if dataset.test_corpus else dataset.test_fraction
    task = dataset.task
    # What the split hash reads: the text, for language modelling the file segment a line is in, for
    # preference the prompt.
    split_key = {"language_modeling": f"file_sha256 || ':' || (row_number // {LM_SEGMENT_LINES})::VARCHAR",
                 "preference": "prompt_key"}.get(task, "text")
    preference = task == "preference"

    conn.execute("CREATE SCHEMA IF NOT EXISTS datasets")
    conn.execute("BEGIN TRANSACTION")
    try:
        # A view, read once by _checked, unless redaction rewrites its texts in place.
        normalised = "TABLE" if dataset.redact else "VIEW"
        conn.execute(f"""
            CREATE OR REPLACE TEMP {normalised} _normalised AS
            WITH copies AS (
                -- Files of the same bytes under several names: each row_id must still be unique, so every copy
                -- after the first (by name) adds its rank; a file's first copy keeps the id of its bytes alone.
                SELECT source_uri, file_sha256,
                       row_number() OVER (PARTITION BY file_sha256 ORDER BY source_uri) - 1 AS copy
                FROM (SELECT DISTINCT source_uri, file_sha256 FROM ({files_union})))
            SELECT source_uri, file_sha256, row_number, role,
                   text AS raw_text, label AS raw_label,
                   {_NORMALISE[task]} AS text,
                   {_LABEL} AS label,
                   substr(sha256(file_sha256 || ':' || row_number::VARCHAR
                                 || CASE WHEN copy > 0 THEN ':' || copy::VARCHAR ELSE '' END), 1, 16) AS row_id
            FROM ({rows_union}) JOIN copies USING (source_uri, file_sha256)
        """)
        redacted = _redact(conn, dataset.redact, json_text=task in JSON_TASKS)
        conn.execute(f'CREATE OR REPLACE TABLE datasets."{name}__redactions" (rule VARCHAR, rows BIGINT)')
        for rule, rows in redacted.items():
            conn.execute(f'INSERT INTO datasets."{name}__redactions" VALUES (?, ?)', [rule, rows])
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE _checked AS
            -- What was read is kept where it differs from the clean text: a valid row always has a text
            -- (coalesce(raw_text, text) gives it back), and most rows are clean as they come.
            SELECT * REPLACE (CASE WHEN reason IS NULL AND raw_text = text THEN NULL ELSE raw_text END AS raw_text),
                   hash(text) AS text_hash,
                   {prompt_key() if preference else "NULL::VARCHAR"} AS prompt_key
            FROM (
            SELECT *,
                   CASE WHEN contains(coalesce(raw_text, ''), chr(0)) THEN 'nul_byte'
                        WHEN trim(text) = '' THEN 'empty_text'
                        WHEN {task == "instruction"} AND {_MESSAGE_NUL} IS NOT NULL THEN 'nul_byte'
                        WHEN {task == "instruction"} AND {_LAST_ROLE} <> 'assistant' THEN 'no_response'
                        WHEN {task == "instruction"} AND trim({_LAST_CONTENT}) = '' THEN 'empty_response'
                        -- a pair's JSON escapes a NUL (\\u0000): its decoded parts are looked at
                        WHEN {preference} AND {_PAIR_NUL} THEN 'nul_byte'
                        WHEN {preference} AND {is_blank(_PROMPT_LAST)} THEN 'empty_prompt'
                        WHEN {preference} AND ({_CHOSEN} IS NULL OR {_REJECTED} IS NULL) THEN 'missing_answer'
                        WHEN {preference} AND ({is_blank(_CHOSEN)} OR {is_blank(_REJECTED)}) THEN 'empty_answer'
                        WHEN {preference} AND {stripped(_CHOSEN)} = {stripped(_REJECTED)} THEN 'identical_answers'
                        WHEN length(text) > {dataset.max_chars} THEN 'too_long'
                        WHEN {task == "classification"} AND label IS NULL THEN 'missing_label'
                        WHEN ? AND NOT list_contains(?, label) THEN 'unknown_label'
                   END AS reason,
                   CASE WHEN contains(coalesce(raw_text, ''), chr(0))
                            THEN 'NUL byte at character ' || strpos(raw_text, chr(0))::VARCHAR || ': a corrupt or binary record'
                        WHEN {preference} AND reason IN ('nul_byte', 'empty_prompt', 'missing_answer', 'empty_answer',
                                                         'identical_answers')
                            THEN {_PAIR_DETAIL}
                        WHEN {task == "instruction"} AND reason = 'nul_byte'
                            THEN 'NUL byte in message ' || {_MESSAGE_NUL}::VARCHAR || ' ('
                                 || json_extract_string(text, '$[*].role')[{_MESSAGE_NUL}] || '): a corrupt or binary record'
                        WHEN {task == "instruction"} AND {_LAST_ROLE} <> 'assistant'
                            THEN 'the conversation ends with a ' || {_LAST_ROLE} || ' message, not an answer'
                        WHEN length(text) > {dataset.max_chars}
                            THEN length(text)::VARCHAR || ' characters, limit {dataset.max_chars}'
                        WHEN label IS NOT NULL AND ? AND NOT list_contains(?, label)
                            THEN 'label ' || label || ' is not one of the dataset labels'
                   END AS detail
            FROM _normalised)
        """, [labels is not None, labels or [], labels is not None, labels or []])
        if preference and dataset.test_corpus:
            # A pair on a test prompt would teach the model what the test asks: kept out, not dropped.
            conn.execute(f"""
                UPDATE _checked SET reason = 'prompt_in_test', raw_text = coalesce(raw_text, text),
                       detail = 'the prompt is also a prompt of the test corpus {dataset.test_corpus}'
                WHERE role = 'main' AND reason IS NULL
                  AND prompt_key IN (SELECT prompt_key FROM _checked WHERE role = 'test' AND reason IS NULL)
            """)
        # Texts that two or more valid rows share: the only ones that can have duplicates or conflicting
        # labels, a few percent of the rows, gathered with what deciding them takes. Per text: its labels
        # when they differ (no way to tell which label is right: all its rows are quarantined), and the
        # row that stays (a test row first, then the first by file and row); the others are duplicates,
        # except in language modelling, which keeps repeated lines (they are part of a text).
        dedupe = task != "language_modeling"
        # A 64-bit hash of the text finds the candidates (an aggregate of integers, not of texts); the
        # texts themselves then decide which repeat.
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE _repeats AS
            WITH candidates AS (SELECT text_hash FROM _checked WHERE reason IS NULL GROUP BY ALL HAVING count(*) > 1),
                 shared AS MATERIALIZED (SELECT * EXCLUDE (text_hash) FROM _checked SEMI JOIN candidates USING (text_hash)
                                         WHERE reason IS NULL),
                 texts AS (SELECT text, arg_min(row_id, (role <> 'test', source_uri, row_number)) AS first_id,
                                  CASE WHEN min(label) <> max(label)
                                       THEN string_agg(DISTINCT label, ', ' ORDER BY label) END AS conflicting_labels
                           FROM shared GROUP BY text HAVING count(*) > 1)
            SELECT shared.*, first_id, conflicting_labels,
                   {dedupe} AND conflicting_labels IS NULL AND row_id <> first_id AND role <> 'test' AS duplicate
            FROM shared JOIN texts USING (text)
        """)
        conn.execute(f"""
            CREATE OR REPLACE TABLE datasets."{name}__quarantine" AS
            SELECT source_uri, file_sha256, NULL::BIGINT AS row_number, line, raw_line AS text,
                   NULL::VARCHAR AS label,
                   -- a whole file: unusable, or never read (a symlink out of the landing folder)
                   CASE WHEN starts_with(error, '{FILE_REJECTED}') THEN 'rejected_file'
                        WHEN starts_with(error, '{WRONG_TYPE}') THEN 'wrong_type'  -- an object or list where text belongs
                        ELSE 'unparseable' END AS reason,
                   error AS detail
            FROM ({rejects_union})
            UNION ALL
            SELECT source_uri, file_sha256, row_number, NULL, raw_text, raw_label, reason, detail
            FROM _checked WHERE reason IS NOT NULL
            UNION ALL
            SELECT source_uri, file_sha256, row_number, NULL, coalesce(raw_text, text), raw_label,
                   'conflicting_labels', 'the same text is labelled ' || conflicting_labels
            FROM _repeats WHERE conflicting_labels IS NOT NULL
            ORDER BY source_uri, coalesce(row_number, 0), line
        """)
        conn.execute(f"""
            CREATE OR REPLACE TABLE datasets."{name}__duplicates" AS
            SELECT row_id, source_uri, file_sha256, row_number, first_id AS duplicate_of
            FROM _repeats WHERE duplicate ORDER BY source_uri, row_number
        """)
        conn.execute(f"""
            CREATE OR REPLACE TABLE datasets."{name}" AS
            WITH kept AS (
                SELECT *, ('0x' || substr(md5(? || {split_key}), 1, 8))::BIGINT / 4294967296.0 AS u
                FROM _checked ANTI JOIN (SELECT row_id FROM _repeats WHERE conflicting_labels IS NOT NULL OR duplicate)
                                        USING (row_id)
                WHERE reason IS NULL
            )
            SELECT row_id,
                   CASE WHEN role = 'test' OR u < {test_share} THEN 'test'
                        WHEN u < {test_share + dataset.validation_fraction} THEN 'validation'
                        ELSE 'train' END AS split,
                   text, label, source_uri, file_sha256, row_number
            -- In the order the version and the export read it (a table scan keeps insertion order).
            FROM kept ORDER BY row_id
        """, [dataset.split_salt])
        # The working tables hold a copy of every row: gone before the checks and the export run.
        for table in ("_checked", "_repeats"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute(f"DROP {normalised} _normalised")
        record_commit(conn, f"datasets.{name}", run_id)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return summarize_dataset(conn, dataset)


def _redact(conn: duckdb.DuckDBPyConnection, rules: list[str], *, json_text: bool = False) -> dict[str, int]:
    """Applies the dataset's redaction rules to _normalised.text; rows changed per rule. `json_text`: the
    texts are JSON, redacted inside their strings."""
    from duckdb import sqltypes

    counts = {}
    for rule in (r for r in RULES if r in rules):
        function = f"ft_redact_{rule}"
        conn.create_function(function, _json_redactor(rule) if json_text else _redactor(rule),
                             [sqltypes.VARCHAR], sqltypes.VARCHAR)
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


def _json_redactor(rule: str):
    """Redacts every string of a JSON text, then writes it as ingest does: on the JSON text itself, an
    address after an escape (`\\nbob@example.org`) would take the escape's letter and leave `\\[EMAIL]`."""
    def redacted(value):
        if isinstance(value, str):
            return redact(value, rule)
        if isinstance(value, list):
            return [redacted(v) for v in value]
        if isinstance(value, dict):
            return {k: redacted(v) for k, v in value.items()}
        return value

    return lambda text: json.dumps(redacted(json.loads(text)), ensure_ascii=False)


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
    """The dataset version, what a trainer sees hashed: sha256 of one line per clean row,
    `row_id:split:label:md5(text)`, in row_id order, joined by newlines. Any change to a row, label or
    split changes it. `rows` is a relation with those columns: the warehouse table, or a snapshot's
    parquet files.

    Streamed a batch at a time, so neither the rows nor the joined text is ever held whole (the same
    value as sha256(string_agg(... ORDER BY row_id))).
    """
    digest, separator = hashlib.sha256(), b""
    for batch in conn.sql(f"""
        SELECT row_id || ':' || split || ':' || coalesce(label, '') || ':' || md5(text) FROM {rows} ORDER BY row_id
    """).fetch_record_batch(100_000):
        if batch.num_rows:
            digest.update(separator + "\n".join(batch.column(0).to_pylist()).encode())
            separator = b"\n"
    return digest.hexdigest()


def label_variants(labels: Iterable[str]) -> list[list[str]]:
    """Groups of labels that differ only by case, whitespace or the spelling of a number (`Billing` and
    `billing`, `credit card` and `creditcard`, `1`, `1.0` and `01`, `True` and `true`): most likely one
    class written in several ways, which a classifier would learn as different classes. Each group
    sorted; the groups in the order of their first label."""
    groups: dict[object, list[str]] = {}
    for label in sorted(labels):
        key: object = "".join(label.split()).casefold()
        try:
            key = float(key)
        except ValueError:
            pass
        groups.setdefault(key, []).append(label)
    return [group for group in groups.values() if len(group) > 1]


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
        SELECT source_uri, coalesce(row_number, line) AS position, reason, detail, text
        FROM datasets."{dataset_name}__quarantine"
        WHERE ? IS NULL OR reason = ?
        QUALIFY ? IS NULL OR row_number() OVER (PARTITION BY reason ORDER BY source_uri, position) <= ?
        ORDER BY reason, source_uri, position
    """, params=[reason, reason, per_reason, per_reason]).fetchall()
    return [{"source_uri": uri, "position": position, "reason": why, "detail": detail, "text": text}
            for uri, position, why, detail, text in rows]


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
