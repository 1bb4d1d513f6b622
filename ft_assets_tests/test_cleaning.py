import duckdb
import pytest

from ft_assets.lib.datasets.cleaning import LM_SEGMENT_LINES, build_dataset, read_split
from ft_assets.lib.config import CorpusConfig, DatasetConfig
from ft_assets.lib.ingest.readers import read_corpus, write_raw
from ft_assets.lib.schemas import check, clean_rows_contract
from ft_assets_tests.conftest import ticket_rows, write_csv


@pytest.fixture
def warehouse(tmp_path):
    return duckdb.connect(str(tmp_path / "warehouse.duckdb"))


def load(conn, tmp_path, rows, name="c", raw_bytes: bytes | None = None):
    landing = tmp_path / name
    if raw_bytes is not None:
        landing.mkdir()
        (landing / "a.csv").write_bytes(raw_bytes)
    else:
        write_csv(landing / "a.csv", rows)
    write_raw(conn, name, read_corpus(CorpusConfig(name=name, path=name, format="csv", label_field="label"), landing))


def dataset(**kw):
    return DatasetConfig(**{"name": "d", "corpus": "c", "labels": ["billing", "shipping"], **kw})


def quarantine(conn):
    return {(r[0], r[1]) for r in conn.sql('SELECT text, reason FROM datasets."d__quarantine"').fetchall()}


def clean(conn):
    return {r[0]: r[1] for r in conn.sql('SELECT text, label FROM datasets."d"').fetchall()}


@pytest.mark.parametrize("text, reason", [
    ("", "empty_text"),
    (" \t\u00a0 ", "empty_text"),
    ("x" * 101, "too_long"),
])
def test_text_rules_quarantine_with_a_reason(warehouse, tmp_path, text, reason):
    load(warehouse, tmp_path, [("billing", text), ("billing", "fine")])
    build_dataset(warehouse, dataset(max_chars=100))
    assert quarantine(warehouse) == {(text if text else None, reason)}
    assert clean(warehouse) == {"fine": "billing"}


@pytest.mark.parametrize("label, reason", [("", "missing_label"), ("biling", "unknown_label")])
def test_label_rules_quarantine_with_a_reason(warehouse, tmp_path, label, reason):
    load(warehouse, tmp_path, [(label, "some text"), ("billing", "fine")])
    build_dataset(warehouse, dataset())
    assert {r for _, r in quarantine(warehouse)} == {reason}


def test_labels_are_inferred_when_not_declared(warehouse, tmp_path):
    load(warehouse, tmp_path, [("anything", "a"), ("else", "b")])
    build_dataset(warehouse, dataset(labels=None))
    assert clean(warehouse) == {"a": "anything", "b": "else"}


def test_unicode_and_whitespace_are_normalised_before_deduplication(warehouse, tmp_path):
    decomposed = "cafe\u0301  bill"  # e + combining accent, two spaces
    load(warehouse, tmp_path, [("billing", "caf\u00e9 bill"), ("billing", decomposed),
                               ("billing", " caf\u00e9\tbill\u00a0"), ("billing", "other")])
    build_dataset(warehouse, dataset())
    assert clean(warehouse) == {"caf\u00e9 bill": "billing", "other": "billing"}
    dupes = warehouse.sql('SELECT row_number, duplicate_of FROM datasets."d__duplicates" ORDER BY 1').fetchall()
    first_id = warehouse.sql("SELECT row_id FROM datasets.\"d\" WHERE row_number = 1").fetchall()[0][0]
    assert dupes == [(2, first_id), (3, first_id)]


def test_identical_texts_with_different_labels_are_all_quarantined(warehouse, tmp_path):
    load(warehouse, tmp_path, [("billing", "same"), ("shipping", "same"), ("billing", "same"), ("billing", "ok")])
    build_dataset(warehouse, dataset())
    rows = warehouse.sql('SELECT reason, detail FROM datasets."d__quarantine"').fetchall()
    assert rows == [("conflicting_labels", "the same text is labelled billing, shipping")] * 3


def test_unparseable_records_reach_the_quarantine_with_the_parser_message(warehouse, tmp_path):
    load(warehouse, tmp_path, None, raw_bytes=b"label,text\nbilling,ok\nbilling,caf\xe9\n")
    build_dataset(warehouse, dataset())
    row = warehouse.sql('SELECT reason, line, detail FROM datasets."d__quarantine"').fetchall()[0]
    assert row[0] == "unparseable" and row[1] == 3 and "unicode" in row[2].lower()


def test_every_raw_record_is_accounted_for_and_the_contract_holds(warehouse, tmp_path):
    rows = ticket_rows(30) + [("billing", ""), ("nope", "x y"), ("billing", ticket_rows(1)[0][1])]
    load(warehouse, tmp_path, rows)
    d = dataset(labels=["billing", "shipping", "access"])
    summary = build_dataset(warehouse, d)
    assert summary.accounted
    assert summary.raw_records == len(rows) == summary.clean_rows + summary.quarantined + summary.duplicates
    assert summary.duplicates == 1 and summary.quarantined == 2
    assert check(warehouse, "datasets.d", clean_rows_contract(d)) == []


def test_a_file_copied_under_a_second_name_is_a_duplicate_of_the_first_not_a_row_id_clash(warehouse, tmp_path):
    # Both copies' rows used to get one row_id (it hashes the file's bytes and the row), so neither was a
    # duplicate of the other and the contract failed on a repeated row_id and text.
    rows = ticket_rows(5)
    landing = tmp_path / "c"
    write_csv(landing / "a.csv", rows)
    write_csv(landing / "b_copy.csv", rows)
    write_raw(warehouse, "c", read_corpus(CorpusConfig(name="c", path="c", format="csv", label_field="label"), landing))
    d = dataset(labels=["billing", "shipping", "access"])
    summary = build_dataset(warehouse, d)
    assert summary.accounted and summary.clean_rows == len(rows) and summary.duplicates == len(rows)
    assert check(warehouse, "datasets.d", clean_rows_contract(d)) == []
    kept = {uri.rsplit("/", 1)[-1] for (uri,) in warehouse.sql('SELECT DISTINCT source_uri FROM datasets."d"').fetchall()}
    assert kept == {"a.csv"}


def test_split_is_deterministic_and_follows_the_fractions(warehouse, tmp_path):
    load(warehouse, tmp_path, ticket_rows(300))
    d = dataset(labels=None, validation_fraction=0.1, test_fraction=0.2)
    first = build_dataset(warehouse, d)
    ids = {s: read_split(warehouse, "d", s).column("row_id").to_pylist() for s in ("train", "validation", "test")}
    again = build_dataset(warehouse, d)
    assert again.version == first.version
    assert ids == {s: read_split(warehouse, "d", s).column("row_id").to_pylist() for s in ids}
    n = first.clean_rows
    assert abs(first.rows_by_split["test"] / n - 0.2) < 0.04
    assert abs(first.rows_by_split["validation"] / n - 0.1) < 0.03
    salted = build_dataset(warehouse, d.model_copy(update={"split_salt": "other"}))
    assert salted.version != first.version


def test_a_test_corpus_is_the_test_split_and_its_texts_leave_train(warehouse, tmp_path):
    load(warehouse, tmp_path, [("billing", "shared text"), ("billing", "train only"), ("shipping", "more")], name="c")
    load(warehouse, tmp_path, [("billing", "shared  text"), ("shipping", "test only")], name="t")
    summary = build_dataset(warehouse, dataset(test_corpus="t", validation_fraction=0.0))
    assert summary.rows_by_split == {"test": 2, "train": 2}
    assert sorted(read_split(warehouse, "d", "test").column("text").to_pylist()) == ["shared text", "test only"]
    assert summary.duplicates == 1 and summary.accounted


def test_a_fixed_test_corpus_keeps_its_own_repeats(warehouse, tmp_path):
    load(warehouse, tmp_path, [("billing", "train text"), ("shipping", "more")], name="c")
    load(warehouse, tmp_path, [("billing", "asked twice"), ("billing", "asked  twice"), ("shipping", "x")], name="t")
    d = dataset(test_corpus="t", validation_fraction=0.0)
    summary = build_dataset(warehouse, d)
    assert summary.rows_by_split == {"test": 3, "train": 2} and summary.duplicates == 0 and summary.accounted
    assert check(warehouse, "datasets.d", clean_rows_contract(d)) == []


def test_the_contract_catches_a_train_text_that_leaks_into_test(warehouse, tmp_path):
    load(warehouse, tmp_path, ticket_rows(10))
    d = dataset(labels=None)
    build_dataset(warehouse, d)
    [(test_text,)] = warehouse.sql("""SELECT text FROM datasets."d" WHERE split = 'test' ORDER BY row_id LIMIT 1""").fetchall()
    [(row,)] = warehouse.execute("""UPDATE datasets."d" SET text = ? WHERE row_id = (
                                        SELECT min(row_id) FROM datasets."d" WHERE split = 'train') RETURNING row_number""",
                                 [test_text]).fetchall()
    (failure,) = check(warehouse, "datasets.d", clean_rows_contract(d))
    assert "repeats" in failure.requirement and failure.rows == 1
    assert failure.sample == [{"source_uri": (tmp_path / "c" / "a.csv").as_uri(), "row_number": row, "value": test_text}]


def load_conversations(conn, tmp_path, lines: list[str]):
    landing = tmp_path / "qa"
    landing.mkdir()
    (landing / "a.jsonl").write_text("\n".join(lines) + "\n")
    write_raw(conn, "qa", read_corpus(CorpusConfig(name="qa", path="qa", format="jsonl", record="instruction"), landing))


def test_instruction_records_become_conversations_and_unanswered_ones_are_quarantined(warehouse, tmp_path):
    import json

    good = [json.dumps({"instruction": f"Name thing {i}.", "input": "" if i % 2 else "Context.", "response": f"Thing {i}."})
            for i in range(30)]
    chat = json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                                    {"role": "assistant", "content": "Hello.\n  Indented line."}]})
    bad = [
        json.dumps({"instruction": "Say nothing.", "response": "   "}),                      # empty_response
        json.dumps({"messages": [{"role": "user", "content": "Anyone?"}]}),              # no_response
        json.dumps({"instruction": "No answer key."}),                                   # reject: missing field
        json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),                # reject: bad role
        '{"instruction": "broken',                                                         # reject: bad JSON
        good[3],                                                                           # duplicate
    ]
    load_conversations(warehouse, tmp_path, good + [chat] + bad)
    summary = build_dataset(warehouse, DatasetConfig(name="d", corpus="qa", task="instruction"))
    assert summary.accounted and summary.clean_rows == 31 and summary.duplicates == 1
    reasons = dict(warehouse.sql('SELECT line, detail FROM datasets."d__quarantine" WHERE reason = \'unparseable\'')
                   .fetchall())
    assert "missing field(s) 'response'" in reasons[34] and "'role': one of" in reasons[35] and 36 in reasons
    assert summary.quarantine_by_reason == {"empty_response": 1, "no_response": 1, "unparseable": 3}
    texts = [json.loads(t) for t in warehouse.sql('SELECT text FROM datasets."d"').fetchall() for t in t]
    assert {"role": "user", "content": "Name thing 0.\n\nContext."} in (m for t in texts for m in t)
    # Whitespace inside an answer survives cleaning: it can be code or a list.
    assert any(m["content"] == "Hello.\n  Indented line." for t in texts for m in t)
    assert not check(warehouse, "datasets.d", clean_rows_contract(DatasetConfig(name="d", corpus="qa", task="instruction")))


def test_language_modeling_keeps_repeated_lines_and_splits_runs_of_lines(warehouse, tmp_path):
    landing = tmp_path / "lines"
    landing.mkdir()
    lines = [f"Line {i % 7} of a text   with  spacing." for i in range(1000)]
    (landing / "a.txt").write_text("\n".join(lines) + "\n")
    write_raw(warehouse, "lines", read_corpus(CorpusConfig(name="lines", path="lines", format="txt"), landing))
    config = DatasetConfig(name="d", corpus="lines", task="language_modeling", validation_fraction=0.1,
                           test_fraction=0.2)
    summary = build_dataset(warehouse, config)
    assert summary.clean_rows == 1000 and summary.duplicates == 0 and summary.accounted
    assert warehouse.sql('SELECT count(*) FROM datasets."d" WHERE text = ?', params=[lines[0]]).fetchall()[0][0] > 1
    # Each run of LM_SEGMENT_LINES lines of a file lands in one split.
    segments = warehouse.sql(f'SELECT row_number // {LM_SEGMENT_LINES}, count(DISTINCT split) FROM datasets."d" '
                             'GROUP BY 1').fetchall()
    assert all(n == 1 for _, n in segments) and len(segments) == 1000 // LM_SEGMENT_LINES + 1
    assert not check(warehouse, "datasets.d", clean_rows_contract(config))
    train_segments = {seg for seg, in warehouse.sql(
        f'SELECT DISTINCT row_number // {LM_SEGMENT_LINES} FROM datasets."d" WHERE split = \'train\'').fetchall()}
    expected = [line for i, line in enumerate(lines) if (i + 1) // LM_SEGMENT_LINES in train_segments]
    assert read_split(warehouse, "d", "train", in_file_order=True).column("text").to_pylist() == expected


PII_ROWS = [
    ("billing", "Please refund jane.doe@example.com, card 4111 1111 1111 1111 was charged twice"),
    ("billing", "Call me on +44 20 7946 0958 about invoice 48213 from 2026-11-26"),
    ("shipping", "Parcel 123456789012 late, ring (555) 123-4567 or 07700900123"),
    ("shipping", "Tracking 1234 5678 9012 3456 shows nothing, order 99812"),
]


def test_redaction_replaces_pii_in_the_clean_text_counts_it_and_leaves_raw_alone(warehouse, tmp_path):
    load(warehouse, tmp_path, PII_ROWS)
    summary = build_dataset(warehouse, dataset(redact=["email", "phone", "card_number"], test_fraction=0.25))
    assert set(clean(warehouse)) == {
        "Please refund [EMAIL], card [CARD_NUMBER] was charged twice",
        "Call me on [PHONE] about invoice 48213 from 2026-11-26",
        "Parcel 123456789012 late, ring [PHONE] or [PHONE]",
        # 16 digits that fail the Luhn check: a tracking number, not a card.
        "Tracking 1234 5678 9012 3456 shows nothing, order 99812",
    }
    assert summary.redacted == {"card_number": 1, "email": 1, "phone": 2}
    raw = {r[0] for r in warehouse.sql('SELECT text FROM raw."c"').fetchall()}
    assert raw == {text for _, text in PII_ROWS}


def test_only_the_rules_asked_for_run(warehouse, tmp_path):
    load(warehouse, tmp_path, PII_ROWS)
    summary = build_dataset(warehouse, dataset(redact=["email"], test_fraction=0.25))
    assert summary.redacted == {"email": 1}
    assert "Call me on +44 20 7946 0958 about invoice 48213 from 2026-11-26" in clean(warehouse)
    assert build_dataset(warehouse, dataset(test_fraction=0.25)).redacted == {}


def test_redaction_keeps_instruction_records_valid_conversations(warehouse, tmp_path):
    import json

    landing = tmp_path / "qa"
    landing.mkdir()
    (landing / "a.jsonl").write_text(json.dumps(
        {"instruction": "Email bob@example.org the receipt", "response": "Sent to bob@example.org."}) + "\n")
    write_raw(warehouse, "qa", read_corpus(CorpusConfig(name="qa", path="qa", format="jsonl", record="instruction"),
                                           landing))
    build_dataset(warehouse, DatasetConfig(name="d", corpus="qa", task="instruction", redact=["email"],
                                           validation_fraction=0.0, test_fraction=0.5))
    (text,) = warehouse.sql('SELECT text FROM datasets."d"').fetchall()[0]
    assert [m["content"] for m in json.loads(text)] == ["Email [EMAIL] the receipt", "Sent to [EMAIL]."]


def test_the_accounting_names_a_file_whose_rows_went_missing(warehouse, tmp_path):
    from ft_assets.lib.datasets.cleaning import summarize_dataset

    load(warehouse, tmp_path, ticket_rows(5))
    config = dataset(labels=None)
    assert build_dataset(warehouse, config).accounted
    warehouse.execute('DELETE FROM datasets."d" WHERE row_id IN (SELECT row_id FROM datasets."d" LIMIT 1)')
    summary = summarize_dataset(warehouse, config)
    assert not summary.accounted
    assert summary.unbalanced_files == [{"source_uri": (tmp_path / "c" / "a.csv").as_uri(), "raw_records": 15,
                                         "placed": 14}]


def test_the_version_is_the_hash_of_every_rows_line_in_row_id_order(warehouse, tmp_path):
    load(warehouse, tmp_path, ticket_rows(300))
    summary = build_dataset(warehouse, dataset(labels=None))
    # The formula the version always had, computed by DuckDB at once: the streamed hash must equal it.
    [(whole,)] = warehouse.sql("""
        SELECT sha256(string_agg(row_id || ':' || split || ':' || coalesce(label, '') || ':' || md5(text), chr(10)
                                 ORDER BY row_id)) FROM datasets."d" """).fetchall()
    assert summary.version == whole


def test_the_snapshot_holds_each_split_in_row_id_order_as_the_trainer_reads_it(warehouse, tmp_path):
    import pyarrow.parquet as pq

    from ft_assets.lib.datasets.snapshot import open_snapshot, write_snapshot

    load(warehouse, tmp_path, ticket_rows(300))
    summary = build_dataset(warehouse, dataset(labels=None))
    write_snapshot(warehouse, "d", tmp_path / "export", {"version": summary.version})
    assert open_snapshot(tmp_path / "export").version == summary.version  # its rows hash to the version
    for split in ("train", "validation", "test"):
        exported = pq.read_table(tmp_path / "export" / f"{split}.parquet")
        assert exported.column("row_id").to_pylist() == read_split(warehouse, "d", split).column("row_id").to_pylist()
        assert exported.column_names == ["row_id", "split", "text", "label", "source_uri", "file_sha256", "row_number"]
