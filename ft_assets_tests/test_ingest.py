import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_assets.lib.config import CorpusConfig
from ft_assets.lib.ingest.readers import read_corpus, write_raw
from ft_assets.lib.storage import sha256_file
from ft_assets_tests.conftest import write_csv


def corpus(fmt, **kw):
    return CorpusConfig(name="c", path="raw/c/", format=fmt, **kw)


def test_csv_rows_carry_their_file_and_its_sha256(tmp_path):
    a = write_csv(tmp_path / "a.csv", [("billing", "hello, world"), ("shipping", 'a "quoted" word')])
    b = write_csv(tmp_path / "b.csv", [("billing", "second file")])
    raw = read_corpus(corpus("csv", label_field="label"), tmp_path)
    rows = raw.rows.to_table().to_pylist()
    assert [(r["text"], r["label"], r["row_number"]) for r in rows] == [
        ("hello, world", "billing", 1), ('a "quoted" word', "shipping", 2), ("second file", "billing", 1)]
    assert rows[0]["source_uri"] == a.as_uri() and rows[2]["source_uri"] == b.as_uri()
    assert rows[0]["file_sha256"] == sha256_file(a) and rows[2]["file_sha256"] == sha256_file(b)
    assert raw.files.to_pylist()[0] == {"source_uri": a.as_uri(), "file_sha256": sha256_file(a),
                                        "bytes": a.stat().st_size, "rows": 2, "rejects": 0}


def test_headerless_tsv_keeps_quotes_as_characters(tmp_path):
    (tmp_path / "sms.tsv").write_text('ham\tsay "hi\nspam\tfree "stuff", now\n')
    raw = read_corpus(corpus("tsv", columns=["label", "text"], label_field="label"), tmp_path)
    assert raw.rows.to_table().column("text").to_pylist() == ['say "hi', 'free "stuff", now']
    assert raw.rejects.count_rows() == 0


def test_jsonl_txt_and_parquet(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text(
        json.dumps({"text": "one", "label": "x"}) + "\n\n" + "{not json\n" + json.dumps({"label": "x"}) + "\n"
        + json.dumps({"text": 5, "label": None}) + "\n")
    raw = read_corpus(corpus("jsonl", label_field="label"), tmp_path / "j")
    assert [(r["row_number"], r["text"], r["label"]) for r in raw.rows.to_table().to_pylist()] == [(1, "one", "x"), (5, "5", None)]
    assert [r["line"] for r in raw.rejects.to_table().to_pylist()] == [3, 4]
    assert "missing field(s) 'text'" in raw.rejects.to_table().to_pylist()[1]["error"]

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_bytes(b"first line\n\nthird \xff line\nfourth\n")
    raw = read_corpus(corpus("txt"), tmp_path / "t")
    assert [(r["row_number"], r["text"]) for r in raw.rows.to_table().to_pylist()] == [(1, "first line"), (4, "fourth")]
    assert raw.rejects.to_table().to_pylist()[0]["line"] == 3

    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"body": ["a", "b"], "y": [1, 2]}), tmp_path / "p" / "a.parquet")
    raw = read_corpus(corpus("parquet", text_field="body", label_field="y"), tmp_path / "p")
    assert [(r["row_number"], r["text"], r["label"]) for r in raw.rows.to_table().to_pylist()] == [(1, "a", "1"), (2, "b", "2")]


def test_undecodable_bytes_and_bad_column_counts_become_rejects_with_their_line(tmp_path):
    (tmp_path / "a.csv").write_bytes(b'label,text\nbilling,ok\nbilling,caf\xe9 bad\nx,y,z\nshipping,fine\n')
    raw = read_corpus(corpus("csv", label_field="label"), tmp_path)
    assert raw.rows.to_table().column("text").to_pylist() == ["ok", "fine"]
    rejects = raw.rejects.to_table().to_pylist()
    assert [r["line"] for r in rejects] == [3, 4]
    assert "unicode" in rejects[0]["error"].lower() and "Columns" in rejects[1]["error"]


def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [("hello",)], header=("text",))
    with pytest.raises(ValueError) as error:
        read_corpus(corpus("csv", label_field="label"), tmp_path)
    assert str(bad) in str(error.value) and "'label'" in str(error.value) and "columns found: text" in str(error.value)


def test_an_empty_landing_folder_or_missing_path_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has no files"):
        read_corpus(corpus("csv", label_field="label"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_corpus(corpus("csv", label_field="label"), tmp_path / "nope")


def test_dotfiles_are_not_read_and_files_are_never_modified(tmp_path):
    landing = tmp_path / "landing"
    a = write_csv(landing / "a.csv", [("billing", "x")])
    (landing / ".gitkeep").write_text("")
    before = sha256_file(a), a.stat().st_mtime_ns
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    write_raw(conn, "c", read_corpus(corpus("csv", label_field="label"), landing))
    assert conn.sql('SELECT count(*) FROM raw."c"').fetchall() == [(1,)]
    assert (sha256_file(a), a.stat().st_mtime_ns) == before
