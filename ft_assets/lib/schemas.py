"""The contracts of the raw and clean tables, what every downstream step may rely on, checked in DuckDB.

A contract is the table's exact columns and types, and rules: a SQL condition that marks a row
breaking the rule, a set of columns that must identify a row, or (clean rows) a text that must not
repeat. Each runs as one SQL query where the table is, so a check holds no more than a sample of
failing rows in Python, whatever the table's size. A failure names the rule, how many rows break it,
and the first few of them by file and row with the offending value.

Why not pandera: its pandas backend loads the whole table into memory (19 times a 1M-row CSV), and
its ibis backend over DuckDB (pandera 0.35, tried on a built warehouse) passed a table with a
repeated row_id and put a window rule's failures on the wrong rows. These rules are a few lines of
SQL each, tested rule by rule in test_schemas.py.

  raw.<corpus>      source_uri, file_sha256 (64 hex digits), row_number (>= 1) present;
                    (file_sha256, row_number) unique; text and label may be null.
  datasets.<name>   row_id (16 hex digits, unique), split (train, validation or test), text (1 to
                    max_chars characters), label (classification: present, one of the dataset's labels
                    when it declares them; instruction and language modelling: null), provenance as
                    above; no train or validation text repeats or also appears in test (language
                    modelling keeps repeated lines, so not there; a fixed test corpus may repeat its own).
                    Preference: text is a pair's JSON {"prompt": [{"role", "content"}, ...] ending with a
                    non-blank user message, "chosen": text, "rejected": text}, the answers non-blank and
                    different; a prompt sits in one split only, so none is in train or validation and
                    in test (prompts compared as the split compares them: cleaning.prompt_key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from ft_assets.lib.config import DatasetConfig
from ft_assets.lib.datasets.expressions import is_blank, prompt_key, stripped

SHA256 = "^[0-9a-f]{64}$"
ROW_ID = "^[0-9a-f]{16}$"
SPLITS = ("train", "validation", "test")
# Failing rows a failure shows: enough to find the cause, bounded whatever the table's size.
SAMPLE_ROWS = 5


@dataclass(frozen=True)
class Rule:
    """Rows for which the SQL condition `broken` holds break the rule; `column` is what it is about."""

    column: str
    requirement: str  # what a row must satisfy, in words
    broken: str


@dataclass(frozen=True)
class Contract:
    columns: dict[str, str]                        # name -> DuckDB type, exactly these
    rules: list[Rule] = field(default_factory=list)
    unique: list[tuple[str, ...]] = field(default_factory=list)
    # Train and validation texts appear once, and never also in the test split.
    no_repeated_text: bool = False
    # SQL for what every row that shares it must share a split with (preference: the prompt); None: no such rule.
    one_split_per: str | None = None


@dataclass(frozen=True)
class Failure:
    column: str
    requirement: str
    rows: int              # rows that break it (0 for a column that is missing or of the wrong type)
    sample: list[dict]     # the first SAMPLE_ROWS of them: source_uri, row_number, value

    def line(self) -> str:
        """One readable line: the rule, the count, where the first failing rows are."""
        where = "; ".join(f"{_file_name(s['source_uri'])} row {s['row_number']}: {_cut(s['value'], 80)!r}"
                          for s in self.sample)
        count = f": {self.rows:,} row(s)" if self.rows else ""
        return f"column {self.column}: {self.requirement}{count}" + (f", e.g. {where}" if where else "")


def _not_null(*columns: str) -> list[Rule]:
    return [Rule(c, "is never null", f"{c} IS NULL") for c in columns]


def _matches(column: str, pattern: str) -> Rule:
    return Rule(column, f"matches {pattern}", f"NOT regexp_full_match({column}, '{pattern}')")


PROVENANCE = [
    *_not_null("source_uri", "file_sha256", "row_number"),
    _matches("file_sha256", SHA256),
    Rule("row_number", "is at least 1", "row_number < 1"),
]

RAW_ROWS = Contract(
    columns={"source_uri": "VARCHAR", "file_sha256": "VARCHAR", "row_number": "BIGINT",
             "text": "VARCHAR", "label": "VARCHAR"},
    rules=PROVENANCE,
    unique=[("file_sha256", "row_number")],
)


def clean_rows_contract(dataset: DatasetConfig) -> Contract:
    """The clean rows' contract with the dataset's own rules: its label set, its length limit, and no
    repeated text except in language modelling (repeated lines are part of a text).

    A fixed test corpus may repeat its own texts (it is kept as published), but no test text may
    also appear in train or validation. Causal-LM tasks have no label: it must be null.
    """
    if dataset.task != "classification":
        label = [Rule("label", f"is null ({dataset.task} rows have no label)", "label IS NOT NULL")]
    else:
        label = _not_null("label")
        if dataset.labels is not None:
            listed = ", ".join(_quoted(v) for v in dataset.labels)
            label.append(Rule("label", f"is one of the dataset's labels ({', '.join(dataset.labels)})",
                              f"label NOT IN ({listed})"))
    preference = dataset.task == "preference"
    return Contract(
        columns={"row_id": "VARCHAR", "split": "VARCHAR", "text": "VARCHAR", "label": "VARCHAR",
                 "source_uri": "VARCHAR", "file_sha256": "VARCHAR", "row_number": "BIGINT"},
        rules=[
            *_not_null("row_id", "split", "text"),
            _matches("row_id", ROW_ID),
            Rule("split", f"is one of {', '.join(SPLITS)}", f"split NOT IN ({', '.join(map(_quoted, SPLITS))})"),
            Rule("text", f"has 1 to {dataset.max_chars} characters",
                 f"NOT length(text) BETWEEN 1 AND {dataset.max_chars}"),
            *(PREFERENCE_PAIR if preference else []),
            *label,
            *PROVENANCE,
        ],
        unique=[("row_id",)],
        no_repeated_text=dataset.task != "language_modeling",
        # A JSON text that is not a pair has no prompt to compare; PREFERENCE_PAIR reports it.
        one_split_per=f"CASE WHEN json_valid(text) THEN {prompt_key()} END" if preference else None,
    )


def _pair_rule(requirement: str, broken: str) -> Rule:
    """A rule on a preference pair's JSON; a text that is not JSON breaks it (and is not parsed)."""
    return Rule("text", requirement, f"CASE WHEN coalesce(json_valid(text), false) THEN ({broken}) ELSE true END")


_ROLES = "['system', 'user', 'assistant']"
_PAIR_CHOSEN, _PAIR_REJECTED = "json_extract_string(text, '$.chosen')", "json_extract_string(text, '$.rejected')"
_PAIR_PROMPT_LAST = "json_extract_string(text, '$.prompt[#-1].content')"
PREFERENCE_PAIR = [
    _pair_rule('is a preference pair: {"prompt": [{"role", "content": text}, ...], "chosen": text, "rejected": text}',
               "json_type(text, '$.prompt') IS DISTINCT FROM 'ARRAY'"
               " OR json_type(text, '$.chosen') IS DISTINCT FROM 'VARCHAR'"
               " OR json_type(text, '$.rejected') IS DISTINCT FROM 'VARCHAR'"
               f" OR NOT list_has_all({_ROLES}, json_extract_string(text, '$.prompt[*].role'))"
               " OR NOT list_has_all(['VARCHAR'], json_type(text, '$.prompt[*].content'))"
               # a message without a role or a content is left out of the wildcard's list
               " OR len(json_type(text, '$.prompt[*].role')) <> json_array_length(text, '$.prompt')"
               " OR len(json_type(text, '$.prompt[*].content')) <> json_array_length(text, '$.prompt')"),
    _pair_rule("has a prompt that ends with a non-blank user message",
               "json_extract_string(text, '$.prompt[#-1].role') IS DISTINCT FROM 'user'"
               f" OR {is_blank(_PAIR_PROMPT_LAST)}"),
    _pair_rule("has a non-blank chosen and rejected answer, different from each other",
               f"{is_blank(_PAIR_CHOSEN)} OR {is_blank(_PAIR_REJECTED)}"
               f" OR {stripped(_PAIR_CHOSEN)} = {stripped(_PAIR_REJECTED)}"),
]


def check(conn: duckdb.DuckDBPyConnection, table: str, contract: Contract) -> list[Failure]:
    """Every way the table breaks its contract; an empty list means it holds. `table` is schema.name."""
    schema, name = table.split(".", 1)
    relation = f'{schema}."{name}"'
    found = dict(conn.sql(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position", params=[schema, name]).fetchall())
    columns = [Failure(c, f"is a column of type {t}", 0, []) for c, t in contract.columns.items() if found.get(c) != t]
    columns += [Failure(c, "is not a column of this table", 0, []) for c in found if c not in contract.columns]
    if columns:
        return columns  # the row rules would not apply to columns that are not there
    failures = []
    if contract.rules:
        # One scan counts every rule; only a rule that fails is asked for its sample. A condition on a
        # null value is null, not true: the not-null rules count those rows.
        counts = conn.sql("SELECT " + ", ".join(f"count(*) FILTER (WHERE {r.broken})" for r in contract.rules)
                          + f" FROM {relation}").fetchall()[0]
        failures += [_failure(conn, r.column, r.requirement,
                              f"SELECT source_uri, row_number, {r.column} FROM {relation} WHERE {r.broken}")
                     for r, n in zip(contract.rules, counts) if n]
    for key in contract.unique:
        columns = ", ".join(key)
        failures.append(_failure(conn, columns, "identifies one row (unique)", f"""
            SELECT source_uri, row_number, ({columns})::VARCHAR FROM ({_sharing(relation, columns)})"""))
    if contract.one_split_per is not None:
        failures.append(_failure(conn, "text", "a prompt sits in one split only (none in train or validation "
                                               "and in test)", f"""
            WITH keyed AS (SELECT source_uri, row_number, split, {contract.one_split_per} AS key FROM {relation}),
                 spread AS (SELECT key FROM keyed WHERE key IS NOT NULL GROUP BY key HAVING count(DISTINCT split) > 1)
            SELECT source_uri, row_number, key FROM keyed SEMI JOIN spread USING (key)"""))
    if contract.no_repeated_text:
        failures.append(_failure(conn, "text", "a train/validation text repeats, or also appears in the test split", f"""
            SELECT source_uri, row_number, text FROM (
                SELECT *, count(*) FILTER (WHERE split <> 'test') OVER texts AS learned,
                          count(*) FILTER (WHERE split = 'test') OVER texts AS tested
                FROM ({_sharing(relation, "text")}) WINDOW texts AS (PARTITION BY text))
            WHERE split <> 'test' AND (learned > 1 OR tested > 0)"""))
    return [f for f in failures if f.rows]


def _sharing(relation: str, key: str) -> str:
    """SQL for the rows of `relation` whose `key` (columns) another row has too. A 64-bit hash of the key
    narrows the search (an aggregate of integers, not of texts); the key itself decides."""
    return f"""
        SELECT * FROM {relation}
        WHERE hash({key}) IN (SELECT hash({key}) FROM {relation} GROUP BY ALL HAVING count(*) > 1)
        QUALIFY count(*) OVER (PARTITION BY {key}) > 1"""


def _failure(conn: duckdb.DuckDBPyConnection, column: str, requirement: str, failing: str) -> Failure:
    """The rows the query `failing` returns (source_uri, row_number, value), counted, with the first few
    by file and row: only those leave DuckDB."""
    rows = conn.sql(f"SELECT count(*) OVER (), * FROM ({failing}) ORDER BY 2, 3 LIMIT {SAMPLE_ROWS}").fetchall()
    return Failure(column, requirement, rows[0][0] if rows else 0,
                   [{"source_uri": uri, "row_number": row, "value": _cut(value, 200)} for _, uri, row, value in rows])


def _cut(value, chars: int):
    """A long text cut to its first `chars` characters, for a failure's sample."""
    return value[:chars] + "…" if isinstance(value, str) and len(value) > chars else value


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _file_name(uri: str | None) -> str:
    return (uri or "(no file)").rsplit("/", 1)[-1]
