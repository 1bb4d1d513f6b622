"""Bad files of every format, each beside a good one: read without a crash, every record accounted for
(clean, quarantined with its file, line and reason, or a duplicate), or the whole file rejected and recorded."""

import io

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_assets.lib.datasets.cleaning import build_dataset
from ft_assets.lib.config import CorpusConfig, DatasetConfig
from ft_assets.lib.ingest.readers import read_corpus, write_raw

GOOD = {
    "csv": b"label,text\nbilling,my card was charged twice\nshipping,where is my parcel\n",
    "tsv": b"billing\tmy card was charged twice\nshipping\twhere is my parcel\n",
    "jsonl": b'{"label": "billing", "text": "my card was charged twice"}\n'
             b'{"label": "shipping", "text": "where is my parcel"}\n',
    "txt": b"my card was charged twice\nwhere is my parcel\n",
}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


LONG = "x" * 1_200_000  # a line over 1 MB
# (format, the bad file's bytes, {quarantine reason: rows} of the bad file after cleaning)
CASES = {
    "csv_extra_column": ("csv", b"label,text,extra\nbilling,refund please,zzz\n", {}),
    "csv_headerless_file": ("csv", b"billing,refund please\nshipping,late parcel\n", {"rejected_file": 1}),
    "csv_a_column_named_twice": ("csv", b"label,text, text \nbilling,refund please,again\n", {"rejected_file": 1}),
    "csv_undecodable_and_mixed_encoding": ("csv", "label,text\nbilling,caf\u00e9 ok\n".encode()
                                           + b"billing,caf\xe9 latin-1\n", {"unparseable": 1}),
    "csv_bom": ("csv", b"\xef\xbb\xbflabel,text\nbilling,refund with a bom\n", {}),
    "csv_empty_file": ("csv", b"", {"rejected_file": 1}),
    "csv_only_blank_lines": ("csv", b"\n\n\n", {"rejected_file": 1}),
    "csv_line_over_1mb": ("csv", f"label,text\nbilling,{LONG}\n".encode(), {"too_long": 1}),
    "csv_nul_byte": ("csv", b"label,text\nbilling,nul\x00inside\n", {"nul_byte": 1}),
    "txt_nul_byte": ("txt", b"fine\nbinary\x00junk\n", {"nul_byte": 1}),
    "csv_label_outside_the_set": ("csv", b"label,text\nbiling,typo label\n", {"unknown_label": 1}),
    "csv_number_as_text": ("csv", b"label,text\nbilling,12345\n", {}),
    "csv_truncated_last_line": ("csv", b'label,text\nbilling,fine\nbilling,"unterminated', {"unparseable": 1}),
    "csv_wrong_column_count": ("csv", b"label,text\nbilling,a,b\nbilling\n", {"unparseable": 2}),
    "tsv_file_with_a_header_declared_headerless": ("tsv", b"label\ttext\nbilling\trefund\n", {"unknown_label": 1}),
    "jsonl_broken_line_in_the_middle": ("jsonl", b'{"label": "billing", "text": "a"}\n{"label": "bil\n'
                                        b'{"label": "billing", "text": "b"}\n', {"unparseable": 1}),
    "jsonl_truncated_last_line": ("jsonl", b'{"label": "billing", "text": "a"}\n{"label": "billing", "te',
                                  {"unparseable": 1}),
    "jsonl_number_as_text": ("jsonl", b'{"label": "billing", "text": 12345}\n', {}),
    "jsonl_missing_field": ("jsonl", b'{"label": "billing", "body": "x"}\n', {"unparseable": 1}),
    "jsonl_bom": ("jsonl", b'\xef\xbb\xbf{"label": "billing", "text": "bom first"}\n', {}),
    "jsonl_not_an_object": ("jsonl", b'["billing", "a list"]\n', {"unparseable": 1}),
    "txt_undecodable_line": ("txt", b"fine line\ncaf\xe9 latin-1\n", {"unparseable": 1}),
    "txt_bom": ("txt", b"\xef\xbb\xbfa line with a bom\n", {}),
    # Blank lines are not records in txt (nor in jsonl): nothing to quarantine, nothing lost.
    "txt_only_blank_lines": ("txt", b"\n\n \n", {}),
    "txt_empty_file": ("txt", b"", {}),
    "parquet_not_parquet": ("parquet", b"PAR1 this is not parquet", {"rejected_file": 1}),
    "parquet_missing_column": ("parquet", parquet_bytes(pa.table({"body": ["x"], "label": ["billing"]})),
                               {"rejected_file": 1}),
    "parquet_number_as_text": ("parquet", parquet_bytes(pa.table({"text": [12345], "label": ["billing"]})), {}),
    # A number or a boolean is read as text (here a label outside the set); an object or a list never is.
    "jsonl_label_a_number": ("jsonl", b'{"label": 1, "text": "a number for a label"}\n', {"unknown_label": 1}),
    "jsonl_label_a_list": ("jsonl", b'{"label": ["billing"], "text": "a list for a label"}\n', {"wrong_type": 1}),
    "jsonl_text_an_object": ("jsonl", b'{"label": "billing", "text": {"body": "an object for a text"}}\n',
                             {"wrong_type": 1}),
    "parquet_label_a_list": ("parquet", parquet_bytes(pa.table({"text": ["a list for a label", "fine"],
                                                                "label": [["billing"], None]})),
                             {"wrong_type": 1, "missing_label": 1}),
    "parquet_text_a_struct": ("parquet", parquet_bytes(pa.table({"text": [{"body": "an object for a text"}],
                                                                 "label": ["billing"]})), {"wrong_type": 1}),
}


def corpus_for(fmt: str) -> CorpusConfig:
    if fmt == "txt":
        return CorpusConfig(name="c", path="c", format="txt")
    if fmt == "tsv":
        return CorpusConfig(name="c", path="c", format="tsv", columns=["label", "text"], label_field="label")
    return CorpusConfig(name="c", path="c", format=fmt, label_field="label")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_file_is_read_accounted_for_and_explained(case, tmp_path):
    fmt, bad, expected = CASES[case]
    landing = tmp_path / "c"
    landing.mkdir()
    good_format = "csv" if fmt == "parquet" else fmt
    (landing / f"good.{good_format}").write_bytes(GOOD[good_format])
    (landing / f"bad.{fmt}").write_bytes(bad)
    corpus = corpus_for(fmt)
    if fmt == "parquet":  # a parquet corpus reads parquet: the good file is written as one
        (landing / "good.csv").unlink()
        pq.write_table(pa.table({"text": ["my card was charged twice", "where is my parcel"],
                                 "label": ["billing", "shipping"]}), landing / "good.parquet")
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    write_raw(conn, "c", read_corpus(corpus, landing))
    task = "language_modeling" if fmt == "txt" else "classification"
    summary = build_dataset(conn, DatasetConfig(
        name="d", corpus="c", task=task, max_chars=2000, test_fraction=0.5,
        **({"labels": ["billing", "shipping"]} if task == "classification" else {})))
    assert summary.accounted and summary.unbalanced_files == []  # in total and per file
    bad_uri = (landing / f"bad.{fmt}").as_uri()
    reasons = dict(conn.sql('SELECT reason, count(*) FROM datasets."d__quarantine" WHERE source_uri = ? GROUP BY 1',
                            params=[bad_uri]).fetchall())
    details = conn.sql('SELECT reason, coalesce(row_number, line), detail FROM datasets."d__quarantine" '
                       'WHERE source_uri = ?', params=[bad_uri]).fetchall()
    assert reasons == expected, details
    for reason, position, detail in details:
        # Precise: a row or line for a record, a reason and a message for a whole file.
        assert position is not None or (reason == "rejected_file" and detail), (reason, position, detail)
    if case.endswith("_bom"):
        texts = [t for (t,) in conn.sql('SELECT text FROM raw."c" WHERE source_uri = ?', params=[bad_uri]).fetchall()]
        assert texts and not any("\ufeff" in t for t in texts)  # the mark is not part of the text
    good = conn.sql('SELECT count(*) FROM datasets."d" WHERE source_uri LIKE \'%/good.%\'').fetchall()[0][0]
    assert good == 2  # the good file beside it is untouched by the bad one


def ticket_dataset(tmp_path, tiny_model_dir, rows: list[tuple[str, str]], dataset: dict | None = None):
    """The tiny ticket project with `rows` as its only landing file: its Definitions and checkpoint key."""
    import dagster as dg

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config
    from ft_assets_tests.conftest import write_csv, write_project

    recipe = {"name": "head", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
              "training": {"epochs": 1, "batch_size": 16, "max_length": 16}}
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[recipe], dataset=dataset)
    landing = tmp_path / "data" / "raw" / "tickets"
    for old in landing.iterdir():
        old.unlink()
    write_csv(landing / "only.csv", rows)
    return build_definitions(load_config(config_path)), dg.AssetKey(["checkpoints", "head"])


def test_a_dataset_whose_every_row_is_quarantined_fails_saying_where_they_went(tmp_path, tiny_model_dir):
    import dagster as dg

    from ft_assets_tests.helpers import materialize_all, step_failure

    defs, _ = ticket_dataset(tmp_path, tiny_model_dir, [("billing", "   ")] * 58 + [("biling", "typo"), ("", "x")])
    result = materialize_all(defs, dg.DagsterInstance.ephemeral(), selection="*datasets/tickets",
                             raise_on_error=False)
    assert not result.success
    assert ("datasets/tickets: 0 clean rows of 60 raw records: 58 empty_text, 1 missing_label, 1 unknown_label. "
            "The quarantined rows and their reasons are in datasets.tickets__quarantine "
            "(`ft-assets quarantine tickets`)") in step_failure(result)


def test_a_classification_dataset_of_one_label_blocks_training_naming_it(tmp_path, tiny_model_dir):
    import dagster as dg

    from ft_assets_tests.conftest import ticket_rows
    from ft_assets_tests.helpers import materialize_all

    defs, checkpoint = ticket_dataset(tmp_path, tiny_model_dir,
                                      [row for row in ticket_rows(40) if row[0] == "billing"])
    result = materialize_all(defs, dg.DagsterInstance.ephemeral(), selection=f"*{checkpoint.to_user_string()}",
                             raise_on_error=False)
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "two_labels"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description == ("the train split has rows of 1 label(s) only (billing): "
                                 "a classifier needs two or more")
    assert checkpoint not in {m.asset_key for m in result.get_asset_materialization_events()}


def test_a_storage_root_that_is_a_file_fails_the_first_asset_saying_so(tmp_path, tiny_model_dir, monkeypatch):
    import dagster as dg

    from ft_assets_tests.helpers import materialize_all, step_failure

    ticket_dataset(tmp_path, tiny_model_dir, [("billing", "refund please")])
    not_a_folder = tmp_path / "root.txt"
    not_a_folder.write_text("a file where the storage root should be\n")
    monkeypatch.setenv("FT_ASSETS_ROOT", str(not_a_folder))
    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config

    defs = build_definitions(load_config(tmp_path / "project.yaml"))  # loads: checking it is the first step's job
    result = materialize_all(defs, dg.DagsterInstance.ephemeral(), selection="raw/tickets", raise_on_error=False)
    assert f"raw/tickets: {not_a_folder} is a file, not a folder: the storage root (storage.root in the project " \
           "YAML, or FT_ASSETS_ROOT) must be a folder" in step_failure(result)
    assert not_a_folder.read_text() == "a file where the storage root should be\n"


def test_a_header_naming_a_column_twice_rejects_the_file_naming_the_column(tmp_path):
    landing = tmp_path / "c"
    landing.mkdir()
    (landing / "good.csv").write_bytes(GOOD["csv"])
    (landing / "twice.csv").write_bytes(b"label,text, text \nbilling,refund please,again\n")
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    write_raw(conn, "c", read_corpus(corpus_for("csv"), landing))
    [(error,)] = conn.sql('SELECT error FROM raw."c__rejects"').fetchall()
    assert error == (f"file rejected: corpus 'c': file {(landing / 'twice.csv').as_uri()}: the header names column "
                     "'text' 2 times ('text', ' text '); rename or remove all but one")


def test_a_label_or_text_of_the_wrong_json_type_is_quarantined_naming_the_field(tmp_path):
    """A JSON list label once became a class of its own (`["ham"]` beside ham and spam), an object text
    the JSON of the object."""
    landing = tmp_path / "c"
    landing.mkdir()
    (landing / "sms.jsonl").write_text(
        '{"label": "ham", "text": "see you at six"}\n{"label": "spam", "text": "you won a prize"}\n'
        '{"label": ["ham"], "text": "running late"}\n{"label": "ham", "text": {"body": "call me"}}\n')
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    write_raw(conn, "c", read_corpus(CorpusConfig(name="c", path="c", format="jsonl", label_field="label"), landing))
    summary = build_dataset(conn, DatasetConfig(name="d", corpus="c", test_fraction=0.5))
    assert summary.accounted
    assert sorted(conn.sql('SELECT DISTINCT label FROM datasets."d"').fetchall()) == [("ham",), ("spam",)]
    assert conn.sql('SELECT line, reason, detail, text FROM datasets."d__quarantine" ORDER BY line').fetchall() == [
        (3, "wrong_type", "wrong_type: field 'label' holds a JSON list, not text",
         '{"label": ["ham"], "text": "running late"}'),
        (4, "wrong_type", "wrong_type: field 'text' holds a JSON object, not text",
         '{"label": "ham", "text": {"body": "call me"}}'),
    ]


def test_an_instruction_field_of_the_wrong_type_is_quarantined_in_jsonl_and_parquet(tmp_path):
    import json

    good = [{"instruction": f"Name thing {i}.", "response": f"Thing {i}."} for i in range(4)]
    wrong = [{"instruction": {"q": "Name a colour."}, "response": "Blue."},
             {"instruction": "Name a shape.", "response": ["Square."]},
             {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": ["Hello."]}]}]
    (tmp_path / "qa_jsonl").mkdir()
    (tmp_path / "qa_jsonl" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good + wrong))
    (tmp_path / "qa_parquet").mkdir()
    pq.write_table(pa.table({"instruction": ["Name a tree.", "Name a fish."], "response": [["Oak."], None]}),
                   tmp_path / "qa_parquet" / "b.parquet")
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    for fmt in ("jsonl", "parquet"):
        write_raw(conn, f"qa_{fmt}", read_corpus(CorpusConfig(name=f"qa_{fmt}", path=f"qa_{fmt}", format=fmt,
                                                              record="instruction"), tmp_path / f"qa_{fmt}"))
    details = {}
    for fmt in ("jsonl", "parquet"):
        summary = build_dataset(conn, DatasetConfig(name=f"d_{fmt}", corpus=f"qa_{fmt}", task="instruction"))
        assert summary.accounted
        details[fmt] = conn.sql(f'SELECT line, reason, detail FROM datasets."d_{fmt}__quarantine" ORDER BY line').fetchall()
    assert details["jsonl"] == [
        (5, "wrong_type", "wrong_type: field 'instruction' holds a JSON object, not text"),
        (6, "wrong_type", "wrong_type: field 'response' holds a JSON list, not text"),
        (7, "wrong_type", "wrong_type: field 'messages'[1].content holds a JSON list, not text"),
    ]
    assert details["parquet"] == [(1, "wrong_type", "wrong_type: field 'response' holds a JSON list, not text"),
                                  (2, "unparseable", "ValueError: missing field(s) 'response' (and no 'messages')")]


def test_label_variants_of_whitespace_are_one_label_and_of_case_or_number_format_a_warning(tmp_path, tiny_model_dir):
    import dagster as dg

    from ft_assets_tests.helpers import materialize_all

    spellings = ["Billing ", "billing", "billing\t", "\u00a0billing", "1", "1.0", "01", "True", "shipping"]
    defs, _ = ticket_dataset(tmp_path, tiny_model_dir,
                             [(label, f"ticket {i} of {label.strip()}") for label in spellings for i in range(6)],
                             dataset={"labels": None})  # every label seen is a class
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_all(defs, instance, selection="*datasets/tickets")
    warehouse = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    labels = [label for (label,) in warehouse.sql('SELECT DISTINCT label FROM datasets."tickets" ORDER BY 1').fetchall()]
    # Every unicode space trimmed, the tab and the no-break space included: four spellings, two labels.
    assert labels == ["01", "1", "1.0", "Billing", "True", "billing", "shipping"]
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "label_variants"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == (
        "datasets/tickets: labels that differ only by case, whitespace or number format are separate classes: "
        "'01' / '1' / '1.0'; 'Billing' / 'billing'. If each group is one class, correct the raw files, or declare "
        "the dataset's `labels:` in the project YAML: rows whose label is not one of them are quarantined as "
        "unknown_label")
    assert check.metadata["variants"].value == [["01", "1", "1.0"], ["Billing", "billing"]]


def test_a_nul_byte_in_a_conversation_is_quarantined_and_named(tmp_path):
    """A conversation is stored as JSON, which escapes a NUL (\\u0000): the rule reads its decoded messages."""
    import json

    rows = [{"instruction": "Name a tree.", "response": "Oak."},
            {"instruction": "Name a\u0000 fish.", "response": "Cod."},
            {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hel\u0000lo."}]}]
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    write_raw(conn, "qa", read_corpus(CorpusConfig(name="qa", path="qa", format="jsonl", record="instruction"),
                                      tmp_path / "qa"))
    summary = build_dataset(conn, DatasetConfig(name="d", corpus="qa", task="instruction"))
    assert summary.accounted
    assert conn.sql('SELECT row_number, reason, detail FROM datasets."d__quarantine" ORDER BY 1').fetchall() == [
        (2, "nul_byte", "NUL byte in message 1 (user): a corrupt or binary record"),
        (3, "nul_byte", "NUL byte in message 2 (assistant): a corrupt or binary record"),
    ]
