"""Property-based tests of the cleaning rules: whatever the rows, none is lost, and the rules hold."""

import json
import tempfile
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ft_assets.lib.datasets.cleaning import build_dataset
from ft_assets.lib.datasets.expressions import SPACE_RUN
from ft_assets.lib.config import CorpusConfig, DatasetConfig
from ft_assets.lib.ingest.readers import read_corpus, write_raw

LABELS = ["billing", "shipping"]
# Texts from a small alphabet with blanks, case and unicode forms, so duplicates, whitespace-only
# texts and NFC/NFKC look-alikes come up often; labels include unknown, blank and missing ones.
TEXT = st.text(alphabet=st.sampled_from(list("ab  \t\ncé\u0065\u0301\u00a0Z")), max_size=12)
LABEL = st.one_of(st.sampled_from(LABELS + ["biling", "", " billing ", "billing\t", "\u00a0shipping", 1, ["billing"]]),
                  st.none())
ROWS = st.lists(st.tuples(LABEL, TEXT), max_size=40)
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(rows: list[tuple[object, str]], files: int = 2, **dataset) -> tuple[duckdb.DuckDBPyConnection, object]:
    """The rows as jsonl spread over `files` files, ingested and cleaned in a fresh warehouse."""
    tmp = Path(tempfile.mkdtemp(prefix="ft_props_"))
    landing = tmp / "c"
    landing.mkdir()
    for i in range(files):
        part = rows[i::files]
        (landing / f"part{i}.jsonl").write_text("".join(
            json.dumps({"text": text, **({"label": label} if label is not None else {})}) + "\n"
            for label, text in part))
    conn = duckdb.connect(str(tmp / "w.duckdb"))
    write_raw(conn, "c", read_corpus(CorpusConfig(name="c", path="c", format="jsonl", label_field="label"), landing))
    summary = build_dataset(conn, DatasetConfig(name="d", corpus="c", labels=LABELS, **dataset))
    return conn, summary


def row_keys(conn, table: str) -> list[tuple[str, int]]:
    """(file, line) of each row; a record that did not parse has no row number, only its line."""
    line = "coalesce(row_number, line)" if table.endswith("__quarantine") else "row_number"
    return conn.sql(f'SELECT source_uri, {line} FROM datasets."{table}"').fetchall()


@PROPERTY
@given(ROWS)
def test_every_raw_row_lands_in_exactly_one_place(rows):
    conn, summary = build(rows)
    assert summary.accounted
    places = row_keys(conn, "d") + row_keys(conn, "d__quarantine") + row_keys(conn, "d__duplicates")
    raw = conn.sql('SELECT source_uri, row_number FROM raw."c" UNION ALL '
                   'SELECT source_uri, line FROM raw."c__rejects"').fetchall()
    assert sorted(places) == sorted(raw)  # each raw row once: none lost, none twice


@PROPERTY
@given(ROWS)
def test_clean_rows_obey_the_rules(rows):
    conn, _ = build(rows)
    clean = conn.sql('SELECT text, label, split FROM datasets."d"').fetchall()
    texts = [text for text, _, _ in clean]
    assert len(texts) == len(set(texts))  # no duplicate text survives
    assert all(text.strip() and label in LABELS and split in ("train", "validation", "test")
               for text, label, split in clean)
    reasons = {r for (r,) in conn.sql('SELECT DISTINCT reason FROM datasets."d__quarantine"').fetchall()}
    # A jsonl record without its label key does not parse: a reject, quarantined as unparseable; a list
    # label is wrong_type.
    assert reasons <= {"unparseable", "wrong_type", "empty_text", "missing_label", "unknown_label", "conflicting_labels"}


@PROPERTY
@given(ROWS, st.randoms(use_true_random=False))
def test_a_texts_split_does_not_depend_on_file_order_or_neighbours(rows, random):
    conn, _ = build(rows)
    shuffled = list(rows)
    random.shuffle(shuffled)
    other, _ = build(shuffled, files=3)
    splits = dict(conn.sql('SELECT text, split FROM datasets."d"').fetchall())
    other_splits = dict(other.sql('SELECT text, split FROM datasets."d"').fetchall())
    assert splits == other_splits


SPACES = st.text(alphabet=st.sampled_from(list("ab \t\n\r\x0b\x0c\x85\x00\x1f\u00a0\u1680\u2000\u2028\u2029\u202f\u3000")),
                 max_size=16)


@PROPERTY
@given(st.lists(SPACES, min_size=1, max_size=20))
def test_collapsing_only_the_runs_that_change_gives_the_text_every_run_collapsed_gives(texts):
    conn = duckdb.connect()
    every_run = r"[\s\p{Z}\p{Cc}]+"
    rows = conn.execute(f"SELECT regexp_replace(t, '{SPACE_RUN}', ' ', 'g'), regexp_replace(t, '{every_run}', ' ', 'g') "
                        "FROM unnest(?) AS u(t)", [texts]).fetchall()
    assert all(fast == plain for fast, plain in rows), rows
