"""Raw corpora: every file of a landing folder into DuckDB, row for row, with where each row came from.

`row_number` is a record's 1-based position among the records parsed from its file (for jsonl
and txt, its line; for json, its index in the file's array); a reject carries the physical `line`
the parser stopped at (for json, the element's index).
Each corpus becomes three tables in the `raw` schema of the warehouse:
  raw.<corpus>           source_uri, file_sha256, row_number, text, label
  raw.<corpus>__rejects  source_uri, file_sha256, line, error, raw_line   (records that did not parse)
  raw.<corpus>__files    source_uri, file_sha256, bytes, rows, rejects
and raw.<corpus>__file_log keeps every file version ever read or withdrawn (see write_raw).
Reading stages each file's rows and rejects as parquet in a temporary folder (DuckDB streams CSV, TSV
and parquet there; the jsonl and txt readers write BATCH_ROWS records at a time, and so does the
json reader, which has DuckDB split the file's array into its elements), and write_raw has DuckDB
load them: no corpus is ever held whole in Python, whatever its size.
Files are only read, never moved or rewritten. A record that cannot be parsed (bad bytes, wrong
column count, bad JSON, a bad element of a json array) is a reject with its line and the parser's
message; a file the corpus cannot use at all (a required column missing, a json file whose top
level is not an array, or whose array cannot be split into elements) raises ValueError naming the
file and the reason.

An instruction corpus (`record: instruction`) stores each record as its conversation: `text` is
the JSON list of chat messages ({"role", "content"}), built from the record's `messages`, or from
instruction / optional input / response as one user turn and one assistant turn; `label` is null.
Whether a conversation ends in a non-empty answer is a cleaning rule, not a parse error.

A preference corpus (`record: preference`) stores each record as one pair: `text` is the JSON
{"prompt": [chat messages, ending with the user's], "chosen": answer text, "rejected": answer text}
(json.dumps, ensure_ascii=False); `label` is null. Each record's layout is recognised from its
fields (PREFERENCE_LAYOUTS): TRL prompt / chosen / rejected (texts or message lists; without a
prompt, chosen and rejected as whole conversations whose shared messages are the prompt), OpenAI
input.messages / preferred_output / non_preferred_output, or ShareGPT conversations ({"from":
system|human|gpt, "value"}) / chosen / rejected; a corpus' `preference_fields` name the three
fields instead. A record in no layout, in two, or with a malformed message list is a reject whose
error names the field and what it should hold; a record without its chosen or rejected answer is
not: the answer is null, and cleaning quarantines the pair, as it does blank or identical answers.

Field types. A text, label or instruction field is read as text when it holds a string, a number or
a boolean (numbers and booleans as JSON spells them: a label `1` is "1", `true` is "true"); a JSON
object or list, or a parquet column of a nested type (list, struct, map), never is: such a record
is a reject whose error starts with WRONG_TYPE and names the field, which cleaning quarantines as
`wrong_type`. A message's content (instruction and preference records) must be a string. CSV and
TSV fields are always text.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ft_assets.lib.config import CorpusConfig
from ft_assets.lib.ingest.landing import landing_changes, local_copies
from ft_assets.lib.storage import sha256_file
from ft_assets.lib.warehouse import Commit, record_commit, table_exists

ROW_SCHEMA = pa.schema(
    [("source_uri", pa.string()), ("file_sha256", pa.string()), ("row_number", pa.int64()),
     ("text", pa.string()), ("label", pa.string())]
)
REJECT_SCHEMA = pa.schema(
    [("source_uri", pa.string()), ("file_sha256", pa.string()), ("line", pa.int64()),
     ("error", pa.string()), ("raw_line", pa.string())]
)
FILE_SCHEMA = pa.schema(
    [("source_uri", pa.string()), ("file_sha256", pa.string()), ("bytes", pa.int64()),
     ("rows", pa.int64()), ("rejects", pa.int64())]
)


# The error prefix of a reject that stands for a whole file (never read, or unusable).
FILE_REJECTED = "file rejected: "


# The error prefix of a record with a field that is not text (see the module docstring).
WRONG_TYPE = "wrong_type: "


class WrongType(ValueError):
    """A record's field holds a value that is never read as text (an object, a list)."""


# Records a Python reader (jsonl, txt, parquet conversations) holds before writing them to its staging file.
BATCH_ROWS = 50_000


@dataclass
class RawCorpus:
    """A corpus' files, read: their rows and rejects staged as parquet in a temporary folder, so that memory
    stays bounded whatever the corpus' size, until write_raw loads them; the file table in memory (one row
    per file). The folder is removed on leaving `with read_corpus(...) as raw:`, or with the object."""

    rows: ds.Dataset      # ROW_SCHEMA: the files in URI order, each file's records in order
    rejects: ds.Dataset   # REJECT_SCHEMA: the same, then the files rejected whole
    files: pa.Table       # FILE_SCHEMA
    staging: tempfile.TemporaryDirectory

    def __enter__(self) -> RawCorpus:
        return self

    def __exit__(self, *exc) -> None:
        self.staging.cleanup()


@dataclass(frozen=True)
class _Staged:
    """Where one file's rows and rejects are written, and the provenance each of them carries."""

    uri: str
    sha256: str
    rows: Path
    rejects: Path


def read_corpus(corpus: CorpusConfig, location: str | Path) -> RawCorpus:
    """Reads every file of the corpus' landing location: a local folder or file, or s3://bucket/prefix/.

    Raises:
        FileNotFoundError: the landing location is missing.
        ValueError: it has no files, or a file lacks a required column (named by its URI).
    """
    staging = tempfile.TemporaryDirectory(prefix="ft_assets_raw_")
    try:
        with local_copies(str(location)) as (files, refused):
            return _read_files(corpus, files, refused, str(location), staging)
    except BaseException:
        staging.cleanup()
        raise


def _read_files(corpus: CorpusConfig, files: list[tuple[str, Path]], refused: list[tuple[str, str]],
                location: str, staging: tempfile.TemporaryDirectory) -> RawCorpus:
    if not files:
        raise ValueError(f"corpus {corpus.name!r}: landing location {location} has no files")
    folder = Path(staging.name)
    staged, file_rows = [], []
    # A file the corpus cannot use at all (a required column missing, not parquet, an empty header)
    # is rejected whole and recorded, so one bad upload does not hold back the others.
    rejected = [(uri, reason, None) for uri, reason in refused]  # (uri, reason, sha256 if read)
    for i, (uri, path) in enumerate(files):
        out = _Staged(uri, sha256_file(path), folder / f"{i:06d}.rows.parquet", folder / f"{i:06d}.rejects.parquet")
        try:
            _READERS[corpus.format](corpus, path, out)
        except ValueError as e:
            # An S3 object is read from a temporary copy: name the object, not the copy.
            rejected.append((uri, str(e).replace(str(path), uri), out.sha256))
            continue
        staged.append(out)
        file_rows.append({"source_uri": uri, "file_sha256": out.sha256, "bytes": path.stat().st_size,
                          "rows": pq.read_metadata(out.rows).num_rows, "rejects": pq.read_metadata(out.rejects).num_rows})
    if not file_rows:
        raise ValueError(f"corpus {corpus.name!r}: no file in {location} could be read:\n"
                         + "\n".join(f"  - {reason}" for _, reason, _ in rejected))
    whole_files = folder / "rejected_files.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"source_uri": uri, "file_sha256": sha, "line": None, "error": f"{FILE_REJECTED}{reason}", "raw_line": None}
         for uri, reason, sha in rejected], schema=REJECT_SCHEMA), whole_files)
    return RawCorpus(
        rows=ds.dataset([str(s.rows) for s in staged], schema=ROW_SCHEMA, format="parquet"),
        rejects=ds.dataset([str(s.rejects) for s in staged] + [str(whole_files)], schema=REJECT_SCHEMA,
                           format="parquet"),
        files=pa.Table.from_pylist(file_rows, schema=FILE_SCHEMA),
        staging=staging,
    )


def write_raw(conn: duckdb.DuckDBPyConnection, corpus_name: str, raw: RawCorpus,
              run_id: str | None = None, *, unrecorded: Commit | None = None,
              recorded_files: dict[str, dict] | None = None) -> dict[str, list[dict]]:
    """Replaces the corpus' three raw tables and appends what changed to its file log, in one transaction
    that also records `run_id` as the tables' last commit (lineage.commits).

    raw.<corpus>__file_log keeps every file version the corpus ever read: one row when content
    arrives (or arrives under a known name: changed), one when it is withdrawn from the landing,
    with the run that saw it. Returns the changes (see landing.landing_changes).

    `unrecorded`: the commit of a run that ended before its materialization was recorded. Its
    file-log rows go, and the changes are counted from `recorded_files` ({uri: {"sha256"}}, what the
    latest recorded materialization read), so the log and the changes follow the recorded history.
    """
    conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
    conn.execute(f"""CREATE TABLE IF NOT EXISTS raw."{corpus_name}__file_log" (
        source_uri VARCHAR, file_sha256 VARCHAR, event VARCHAR, run_id VARCHAR, logged_at TIMESTAMPTZ)""")
    previous = committed_files(conn, corpus_name) if unrecorded is None else (recorded_files or {})
    current = {f["source_uri"]: {"sha256": f["file_sha256"]} for f in raw.files.to_pylist()}
    changes = landing_changes(previous, current)
    events = [(c["uri"], c["sha256"], kind) for kind in ("arrived", "changed", "moved", "withdrawn")
              for c in changes[kind]]
    conn.execute("BEGIN TRANSACTION")
    try:
        # DuckDB reads the staged parquet itself, in file order, spilling to disk as it needs.
        for suffix, staged in (("", raw.rows), ("__rejects", raw.rejects)):
            conn.execute(f'CREATE OR REPLACE TABLE raw."{corpus_name}{suffix}" AS SELECT * FROM read_parquet(?)',
                         [staged.files])
        conn.register("_incoming", raw.files)
        conn.execute(f'CREATE OR REPLACE TABLE raw."{corpus_name}__files" AS SELECT * FROM _incoming')
        conn.unregister("_incoming")
        if unrecorded is not None:
            conn.execute(f'DELETE FROM raw."{corpus_name}__file_log" WHERE run_id IS NOT DISTINCT FROM ?',
                         [unrecorded.run_id])
        for uri, sha, kind in events:
            conn.execute(f'INSERT INTO raw."{corpus_name}__file_log" VALUES (?, ?, ?, ?, now())',
                         [uri, sha, kind, run_id])
        record_commit(conn, f"raw.{corpus_name}", run_id)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return changes


def committed_files(conn: duckdb.DuckDBPyConnection, corpus_name: str) -> dict[str, dict]:
    """The files raw.<corpus> holds now: {uri: {"sha256"}} (empty before the first ingest)."""
    if not table_exists(conn, f"raw.{corpus_name}__files"):
        return {}
    return {uri: {"sha256": sha} for uri, sha in
            conn.sql(f'SELECT source_uri, file_sha256 FROM raw."{corpus_name}__files"').fetchall()}


def _required_fields(corpus: CorpusConfig) -> list[str]:
    if corpus.record != "text":
        # instruction: messages or instruction + response, _conversation says which is missing;
        # preference: the layout decides, _preference_pair says what is missing.
        return []
    return [f for f in (corpus.text_field, corpus.label_field) if f]


def _record_text_label(corpus: CorpusConfig, record: object) -> tuple[str | None, str | None]:
    """A parsed JSON record (a jsonl line, a json array element) as the raw table's text and label.

    Raises:
        ValueError: the record is not an object, lacks a required field or holds a malformed one.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in _required_fields(corpus) if k not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(map(repr, missing))}")
    if corpus.record == "instruction":
        return _conversation(corpus, record), None
    if corpus.record == "preference":
        return _preference_pair(corpus, record), None
    text = _as_text(record[corpus.text_field], corpus.text_field)
    label = _as_text(record.get(corpus.label_field), corpus.label_field) if corpus.label_field else None
    return text, label


ROLES = ("system", "user", "assistant")


def _conversation(corpus: CorpusConfig, record: dict) -> str:
    """The record as chat messages JSON (see the module docstring).

    Raises:
        ValueError: naming the field that is missing or malformed.
    """
    fields = corpus.instruction_fields
    if record.get(fields.messages) is not None:
        messages = record[fields.messages]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"field {fields.messages!r} must be a non-empty list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
                raise ValueError(f"field {fields.messages!r}[{i}] must be {{'role': one of {ROLES}, 'content': text}}")
            if not isinstance(m["content"], str):
                raise WrongType(f"{WRONG_TYPE}field {fields.messages!r}[{i}].content holds "
                                f"{_json_kind(m['content'])}, not text")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        missing = [f for f in (fields.instruction, fields.response) if record.get(f) is None]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(map(repr, missing))} (and no {fields.messages!r})")
        prompt = _as_text(record[fields.instruction], fields.instruction)
        context = _as_text(record.get(fields.input), fields.input)
        if context and context.strip():
            prompt = f"{prompt}\n\n{context}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _as_text(record[fields.response], fields.response)}]
    return json.dumps(messages, ensure_ascii=False)


# The preference layouts recognised by their fields: name -> the fields of the prompt, the chosen
# and the rejected answer. TRL and ShareGPT share chosen / rejected: prompt or conversations decides.
PREFERENCE_LAYOUTS = {
    "TRL": ("prompt", "chosen", "rejected"),
    "OpenAI": ("input", "preferred_output", "non_preferred_output"),
    "ShareGPT": ("conversations", "chosen", "rejected"),
}
# ShareGPT's speakers (`from`) as chat roles; some exports already write user / assistant.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
_LAYOUT_NAMES = ("TRL (prompt, chosen, rejected), OpenAI (input.messages, preferred_output, "
                 "non_preferred_output) or ShareGPT (conversations, chosen, rejected)")
_NAME_THEM = "name its fields in the corpus' preference_fields: {prompt, chosen, rejected}"


def _preference_pair(corpus: CorpusConfig, record: dict) -> str:
    """The record as one preference pair's JSON (see the module docstring).

    Raises:
        ValueError: the record is in no layout or in two, or a field is malformed (naming it).
        WrongType: a message's content is not text.
    """
    prompt_field, chosen_field, rejected_field = _preference_fields(corpus, record)
    prompt_value, chosen_value, rejected_value = (record.get(f) for f in (prompt_field, chosen_field, rejected_field))
    if prompt_value is None and (isinstance(chosen_value, list) or isinstance(rejected_value, list)):
        prompt, chosen, rejected = _shared_prompt(chosen_field, chosen_value, rejected_field, rejected_value)
    else:
        prompt = [] if prompt_value is None else _prompt(prompt_value, prompt_field)
        chosen, rejected = _answer(chosen_value, chosen_field), _answer(rejected_value, rejected_field)
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False)


def _preference_fields(corpus: CorpusConfig, record: dict) -> tuple[str, str, str]:
    """The record's (prompt, chosen, rejected) fields: the corpus' preference_fields, else its layout's.
    A field counts as present when it holds a value (a parquet file has every column in every row)."""
    present = [k for k, v in record.items() if v is not None]
    if corpus.preference_fields is not None:
        named = corpus.preference_fields
        fields = (named.prompt, named.chosen, named.rejected)
        if not any(f in present for f in fields):
            raise ValueError(f"none of the preference_fields {', '.join(map(repr, fields))} is set "
                             f"(fields found: {', '.join(present) or 'none'})")
        return fields
    seen = {name: [f for f in fields if f in present] for name, fields in PREFERENCE_LAYOUTS.items()}
    if seen["TRL"] and seen["ShareGPT"]:
        if "conversations" not in present:
            seen["ShareGPT"] = []
        elif "prompt" not in present:
            seen["TRL"] = []
    layouts = [name for name, fields in seen.items() if fields]
    if not layouts:
        raise ValueError(f"no known preference layout: expected {_LAYOUT_NAMES}; the record has "
                         f"{', '.join(present) or 'no fields'}; {_NAME_THEM}")
    if len(layouts) > 1:
        mixed = " and ".join(f"{name} ({', '.join(seen[name])})" for name in layouts)
        raise ValueError(f"the record has fields of more than one preference layout: {mixed}; {_NAME_THEM}")
    return PREFERENCE_LAYOUTS[layouts[0]]


def _messages(value: object, field: str) -> list[dict]:
    """Chat messages ({"role", "content"}) or ShareGPT turns ({"from", "value"}) as chat messages.

    Raises:
        ValueError: not a list of messages; WrongType: a content that is not text.
    """
    if not isinstance(value, list):
        raise ValueError(f"field {field!r} must be a list of messages, not {_json_kind(value)}")
    return [_message(m, f"{field!r}[{i}]") for i, m in enumerate(value)]


def _message(value: object, where: str) -> dict:
    """One chat message or ShareGPT turn as {"role", "content"}; `where` names it in errors ('chosen'[0])."""
    if isinstance(value, dict) and value.get("role") in ROLES and "content" in value:
        role, content, key = value["role"], value["content"], "content"
    elif isinstance(value, dict) and value.get("from") in SHAREGPT_ROLES and "value" in value:
        role, content, key = SHAREGPT_ROLES[value["from"]], value["value"], "value"
    else:
        raise ValueError(f"field {where} must be a chat message {{'role': one of {ROLES}, 'content': text}} "
                         f"or a ShareGPT turn {{'from': one of {tuple(SHAREGPT_ROLES)}, 'value': text}}")
    if not isinstance(content, str):
        raise WrongType(f"{WRONG_TYPE}field {where}.{key} holds {_json_kind(content)}, not text")
    return {"role": role, "content": content}


def _prompt(value: object, field: str) -> list[dict]:
    """A prompt field as chat messages: a text is the user's message; {"messages": [...]} (OpenAI's
    input) or a list are messages, which end with the user's, the turn both answers reply to."""
    if isinstance(value, dict):
        if "messages" not in value:
            raise ValueError(f"field {field!r} must be a text, a list of messages or {{'messages': [...]}}; "
                             f"it is a JSON object without 'messages'")
        return _ends_with_user(_messages(value["messages"], f"{field}.messages"), f"{field}.messages")
    if isinstance(value, list):
        return _ends_with_user(_messages(value, field), field)
    return [{"role": "user", "content": _as_text(value, field)}]


def _ends_with_user(messages: list[dict], field: str) -> list[dict]:
    if messages and messages[-1]["role"] != "user":
        raise ValueError(f"field {field!r} must end with the user's message, which the answers reply to; "
                         f"it ends with a {messages[-1]['role']} message")
    return messages


def _answer(value: object, field: str) -> str | None:
    """An answer field as its text: a text, one assistant message, or a list of one (OpenAI's outputs,
    TRL's conversational answers). None, or an empty list, is a missing answer."""
    if value is None or value == []:
        return None
    if isinstance(value, (dict, list)):
        messages = _messages(value, field) if isinstance(value, list) else [_message(value, repr(field))]
        if len(messages) > 1:
            raise ValueError(f"field {field!r} must hold one answer, the assistant's message; it holds "
                             f"{len(messages)} messages")
        if messages[0]["role"] != "assistant":
            raise ValueError(f"field {field!r} must be the assistant's answer, not a {messages[0]['role']} message")
        return messages[0]["content"]
    return _as_text(value, field)


def _shared_prompt(chosen_field: str, chosen_value: object, rejected_field: str,
                   rejected_value: object) -> tuple[list[dict], str | None, str | None]:
    """TRL's implicit prompt: with no prompt field, chosen and rejected are whole conversations, the same
    up to their last message, the answer; what they share is the prompt. Returns (prompt, chosen, rejected)."""
    conversations = {}
    for field, value in ((chosen_field, chosen_value), (rejected_field, rejected_value)):
        if value is None or value == []:
            continue
        if not isinstance(value, list):
            raise ValueError(f"field {field!r} must be a conversation (a list of messages) as the other answer "
                             f"is, since the record has no prompt; it is {_json_kind(value)}")
        messages = _messages(value, field)
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"field {field!r} must end with the assistant's answer; it ends with a "
                             f"{messages[-1]['role']} message")
        conversations[field] = messages
    histories = [messages[:-1] for messages in conversations.values()]
    shared = 0
    while all(len(h) > shared for h in histories) and all(h[shared] == histories[0][shared] for h in histories):
        shared += 1
    if any(len(h) != shared for h in histories):
        raise ValueError(f"fields {chosen_field!r} and {rejected_field!r} hold whole conversations (the record has "
                         f"no prompt), so they must be the same up to their last message, the answer; they differ "
                         f"at message {shared + 1}")
    prompt = _ends_with_user(histories[0] if histories else [], f"{chosen_field}/{rejected_field}")
    chosen, rejected = (conversations[f][-1]["content"] if f in conversations else None
                        for f in (chosen_field, rejected_field))
    return prompt, chosen, rejected


def _missing_column_error(corpus: CorpusConfig, path: Path, missing: list[str], found: list[str]) -> ValueError:
    return ValueError(
        f"corpus {corpus.name!r}: file {path} has no column {', '.join(map(repr, missing))} "
        f"(columns found: {', '.join(found) or 'none'}); fix the file or the corpus' "
        "text_field/label_field/columns"
    )


def _read_delimited(corpus: CorpusConfig, path: Path, out: _Staged) -> None:
    delim = "\t" if corpus.format == "tsv" else ","
    if corpus.columns is not None:
        names, header = corpus.columns, False
    else:
        names, header = _header(corpus, path, delim), True
    missing = [f for f in _required_fields(corpus) if f not in names]
    if missing:
        raise _missing_column_error(corpus, path, missing, names)
    # TSV has no quoting convention: a `"` inside a text is just a character.
    quote = "" if corpus.format == "tsv" else '"'
    conn = _file_connection(path)
    # One thread keeps the scan in file order, so row_number() is the record's position.
    conn.execute("SET threads = 1")
    for name, value in (("header", header), ("delim", delim), ("quote", quote), ("columns", {n: "VARCHAR" for n in names})):
        conn.execute(f"SET VARIABLE {name} = ?", [value])
    label = f'"{corpus.label_field}"' if corpus.label_field else "NULL::VARCHAR"
    _copy(conn, f"""
        SELECT row_number() OVER () AS row_number, "{corpus.text_field}" AS text, {label} AS label
        FROM read_csv(getvariable('path'), header = getvariable('header'), delim = getvariable('delim'),
                      quote = getvariable('quote'), escape = getvariable('quote'), columns = getvariable('columns'),
                      auto_detect = false, store_rejects = true,
                      rejects_table = 'rejects', rejects_scan = 'reject_scans')
    """, out.rows, out)
    _copy(conn, "SELECT line::BIGINT AS line, error_type || ': ' || error_message AS error, csv_line AS raw_line "
                "FROM rejects ORDER BY line", out.rejects, out)


def _file_connection(path: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that reads one landing file, named by the variable `path`."""
    conn = duckdb.connect()
    conn.execute("SET VARIABLE path = ?", [str(path)])
    return conn


def _copy(conn: duckdb.DuckDBPyConnection, query: str, target: Path, out: _Staged) -> None:
    """Streams the query's records, each with the file's provenance first, into the parquet file `target`."""
    conn.execute("SET VARIABLE source_uri = ?", [out.uri])
    conn.execute("SET VARIABLE file_sha256 = ?", [out.sha256])
    conn.execute(f"""COPY (SELECT getvariable('source_uri') AS source_uri, getvariable('file_sha256') AS file_sha256, *
                           FROM ({query})) TO {_sql_text(str(target))} (FORMAT parquet)""")


class _ParquetRecords:
    """A Python reader's records, written to parquet BATCH_ROWS at a time with the file's provenance: the
    reader holds one batch, never a whole file."""

    def __init__(self, target: Path, schema: pa.Schema, out: _Staged):
        self._schema, self._writer, self._batch = schema, pq.ParquetWriter(target, schema), []
        self._provenance = {"source_uri": out.uri, "file_sha256": out.sha256}

    def append(self, record: dict) -> None:
        self._batch.append({**self._provenance, **record})
        if len(self._batch) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        self._writer.write_table(pa.Table.from_pylist(self._batch, schema=self._schema))
        self._batch = []

    def __enter__(self) -> _ParquetRecords:
        return self

    def __exit__(self, error_type, *exc) -> None:
        if error_type is None and self._batch:
            self._flush()
        self._writer.close()


def _header(corpus: CorpusConfig, path: Path, delim: str) -> list[str]:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus {corpus.name!r}: file {path}: header line is not UTF-8 ({e})") from e
    quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
    written = next(csv.reader([line], delimiter=delim, quoting=quoting), [])
    names = [n.strip() for n in written]
    if not any(names):
        raise ValueError(f"corpus {corpus.name!r}: file {path} is empty or has an empty header line")
    # Two columns of one name would leave one per record unread and every line one field too long.
    repeated = next((n for n in names if n and names.count(n) > 1), None)
    if repeated is not None:
        spellings = ", ".join(repr(w.rstrip("\r\n")) for w, n in zip(written, names) if n == repeated)
        raise ValueError(f"corpus {corpus.name!r}: file {path}: the header names column {repeated!r} "
                         f"{names.count(repeated)} times ({spellings}); rename or remove all but one")
    return names


def _read_jsonl(corpus: CorpusConfig, path: Path, out: _Staged) -> None:
    with (open(path, "rb") as f, _ParquetRecords(out.rows, ROW_SCHEMA, out) as rows,
          _ParquetRecords(out.rejects, REJECT_SCHEMA, out) as rejects):
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                # A byte-order mark may open the file; it is not part of the first record.
                record = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
                text, label = _record_text_label(corpus, record)
            except (UnicodeDecodeError, ValueError) as e:
                rejects.append({"line": line_no, "error": _reject_error(e),
                                "raw_line": raw.decode("utf-8", errors="replace").rstrip("\n")})
                continue
            rows.append({"row_number": line_no, "text": text, "label": label})


def _read_json(corpus: CorpusConfig, path: Path, out: _Staged) -> None:
    """One JSON array of records. DuckDB splits the array into its elements' raw text, a batch at a time
    (an element it can delimit but that does not parse is still one element), and each is parsed as a
    jsonl line is: a bad element is a reject at its 1-based index."""
    top = _first_character(path)
    if top not in ("[", None):
        kind = {"{": "a JSON object"}.get(top, f"a value starting with {top!r}")
        raise ValueError(f"corpus {corpus.name!r}: file {path} holds {kind} at its top level, not an array of "
                         "records: a json corpus file is one array [{...}, {...}]; for one record per line use "
                         "format: jsonl")
    conn = _file_connection(path)
    conn.execute("SET threads = 1")  # the elements in file order
    try:
        batches = conn.sql("SELECT json::VARCHAR FROM read_json_objects(getvariable('path'), format = 'array')"
                           ).fetch_record_batch(BATCH_ROWS)
        with (_ParquetRecords(out.rows, ROW_SCHEMA, out) as rows,
              _ParquetRecords(out.rejects, REJECT_SCHEMA, out) as rejects):
            elements = (element for batch in batches for element in batch.column(0).to_pylist())
            for index, element in enumerate(elements, start=1):
                try:
                    text, label = _record_text_label(corpus, json.loads(element))
                except ValueError as e:
                    rejects.append({"line": index, "error": _reject_error(e), "raw_line": element})
                    continue
                rows.append({"row_number": index, "text": text, "label": label})
    except duckdb.Error as e:
        # The array itself is broken (cut off, a missing comma, bytes that are not UTF-8): where one
        # element ends is unknown, so none of the file can be trusted.
        raise ValueError(f"corpus {corpus.name!r}: file {path} is not a readable JSON array: {e}".strip()) from e


def _first_character(path: Path) -> str | None:
    """The first character of a file after any byte-order mark and whitespace (None: there is none)."""
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
        while not head:
            chunk = f.read(4096)
            if not chunk:
                return None
            head = chunk.lstrip()
    return head[:1].decode("utf-8", errors="replace")


def _read_txt(corpus: CorpusConfig, path: Path, out: _Staged) -> None:
    with (open(path, "rb") as f, _ParquetRecords(out.rows, ROW_SCHEMA, out) as rows,
          _ParquetRecords(out.rejects, REJECT_SCHEMA, out) as rejects):
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                rejects.append({"line": line_no, "error": f"UnicodeDecodeError: {e}",
                                "raw_line": raw.decode("utf-8", errors="replace").rstrip("\n")})
                continue
            if text.strip():
                rows.append({"row_number": line_no, "text": text, "label": None})


def _read_parquet(corpus: CorpusConfig, path: Path, out: _Staged) -> None:
    conn = _file_connection(path)
    try:
        types = {name: kind for name, kind, *_ in
                 conn.sql("DESCRIBE SELECT * FROM read_parquet(getvariable('path'))").fetchall()}
    except duckdb.Error as e:
        raise ValueError(f"corpus {corpus.name!r}: file {path} is not a readable parquet file: {e}") from e
    missing = [f for f in _required_fields(corpus) if f not in types]
    if missing:
        raise _missing_column_error(corpus, path, missing, list(types))
    if corpus.record != "text":
        return _parquet_records(corpus, conn, out)
    label = f'CAST("{corpus.label_field}" AS VARCHAR)' if corpus.label_field else "NULL::VARCHAR"
    # A record whose text or label column is of a nested type is a wrong_type reject, unless the value is null.
    nested = [f for f in (corpus.text_field, corpus.label_field) if f and _is_nested(types[f])]
    wrong = " OR ".join(f'"{f}" IS NOT NULL' for f in nested) or "false"
    scan = "read_parquet(getvariable('path'), file_row_number = true)"
    # The scan keeps the file's order (DuckDB preserves insertion order), so no sort is needed.
    _copy(conn, f"""SELECT file_row_number + 1 AS row_number, CAST("{corpus.text_field}" AS VARCHAR) AS text,
                           {label} AS label
                    FROM {scan} WHERE NOT ({wrong})""", out.rows, out)
    if not nested:
        with _ParquetRecords(out.rejects, REJECT_SCHEMA, out):
            pass  # a record of scalar columns always reads: no rejects
        return
    error = " ".join(f'WHEN "{f}" IS NOT NULL THEN {_sql_text(f"{WRONG_TYPE}field {f!r} holds a parquet {types[f]}, not text")}'
                     for f in nested)
    _copy(conn, f"""SELECT file_row_number + 1 AS line, CASE {error} END AS error,
                           to_json(struct_pack({", ".join(f'"{f}"' for f in nested)}))::VARCHAR AS raw_line
                    FROM {scan} WHERE {wrong}""", out.rejects, out)


def _parquet_records(corpus: CorpusConfig, conn: duckdb.DuckDBPyConnection, out: _Staged) -> None:
    """Instruction or preference records from parquet: their columns (lists and structs as Python lists
    and dicts) read as a JSON record is."""
    batches = conn.sql("SELECT * FROM read_parquet(getvariable('path'))").fetch_record_batch(BATCH_ROWS)
    with _ParquetRecords(out.rows, ROW_SCHEMA, out) as rows, _ParquetRecords(out.rejects, REJECT_SCHEMA, out) as rejects:
        records = (record for batch in batches for record in batch.to_pylist())
        for row_number, record in enumerate(records, start=1):
            try:
                text, _ = _record_text_label(corpus, record)
                rows.append({"row_number": row_number, "text": text, "label": None})
            except ValueError as e:
                rejects.append({"line": row_number, "error": _reject_error(e),
                                "raw_line": json.dumps(record, default=str)})


def _as_text(value: object, field: str) -> str | None:
    """A field's value as text, None as None (see the module docstring).

    Raises:
        WrongType: the value is an object or a list, naming `field`.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, (dict, list, tuple)):
        raise WrongType(f"{WRONG_TYPE}field {field!r} holds {_json_kind(value)}, not text")
    return str(value)  # a parquet scalar read through Python: a date, a decimal


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_kind(value: object) -> str:
    return {dict: "a JSON object", list: "a JSON list", tuple: "a JSON list", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _is_nested(duckdb_type: str) -> bool:
    return duckdb_type.endswith("]") or duckdb_type.startswith(("STRUCT", "MAP", "UNION"))


def _reject_error(error: ValueError) -> str:
    """A reject's error: a wrong_type error as it is (it starts with WRONG_TYPE), others after their kind."""
    return str(error) if isinstance(error, WrongType) else f"{type(error).__name__}: {error}"


_READERS = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "json": _read_json,
            "txt": _read_txt, "parquet": _read_parquet}


def read_texts(conn: duckdb.DuckDBPyConnection, corpus_name: str, limit: int) -> list[str]:
    """The corpus' first `limit` non-blank texts, in file order (e.g. the general text for forgetting)."""
    return [r[0] for r in conn.sql(
        f"""SELECT text FROM raw."{corpus_name}" WHERE trim(coalesce(text, '')) <> ''
            ORDER BY source_uri, row_number LIMIT ?""", params=[limit]).fetchall()]
