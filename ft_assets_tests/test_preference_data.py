"""Preference data, from raw files to clean pairs: the three layouts in jsonl, json and parquet, the
json format for every record type, detection errors, the cleaning rules, the split by prompt and the
clean contract, each on a real DuckDB warehouse file."""

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_assets.lib.config import CorpusConfig, DatasetConfig
from ft_assets.lib.datasets.cleaning import build_dataset
from ft_assets.lib.ingest.readers import WRONG_TYPE, read_corpus, write_raw
from ft_assets.lib.schemas import check, clean_rows_contract

REPO = Path(__file__).resolve().parents[1]
ORCA_TRAIN = Path("/work/shared/data/orca_dpo_pairs/train.jsonl")

SYSTEM, QUESTION = "Answer in one short sentence.", "Which river does Ashford lie on?"
GOOD, BAD = "Ashford lies on the river Wend.", "Ashford lies on the river Quill."
PROMPT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def assistant(text):
    return {"role": "assistant", "content": text}


# The one pair in each layout the readers recognise by themselves.
LAYOUTS = {
    "trl": {"prompt": PROMPT, "chosen": [assistant(GOOD)], "rejected": [assistant(BAD)]},
    "trl_implicit_prompt": {"chosen": PROMPT + [assistant(GOOD)], "rejected": PROMPT + [assistant(BAD)]},
    "openai": {"input": {"messages": PROMPT}, "preferred_output": [assistant(GOOD)],
               "non_preferred_output": [assistant(BAD)]},
    "sharegpt": {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": QUESTION}],
                 "chosen": {"from": "gpt", "value": GOOD}, "rejected": {"from": "gpt", "value": BAD}},
}
CANONICAL = json.dumps({"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}, ensure_ascii=False)


@pytest.fixture
def warehouse(tmp_path):
    return duckdb.connect(str(tmp_path / "warehouse.duckdb"))


def write_records(path: Path, records: list, fmt: str) -> Path:
    """The records as one file of the format: a line each (jsonl), one array (json) or a table (parquet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def pairs_corpus(name="c", fmt="jsonl", **kw):
    return CorpusConfig(name=name, path=name, format=fmt, record="preference", **kw)


def ingest(conn, tmp_path, records: list, *, name="c", fmt="jsonl", **kw):
    write_records(tmp_path / name / f"a.{fmt}", records, fmt)
    write_raw(conn, name, read_corpus(pairs_corpus(name, fmt, **kw), tmp_path / name))


def pairs(dataset_name="d", corpus="c", **kw):
    return DatasetConfig(name=dataset_name, corpus=corpus, task="preference", **kw)


def pair(question, chosen="Yes.", rejected="No.", system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def quarantine(conn, name="d"):
    return conn.sql(f'SELECT coalesce(row_number, line), reason, detail FROM datasets."{name}__quarantine" '
                    "ORDER BY 1").fetchall()


def clean_pairs(conn, name="d"):
    return [(split, json.loads(text)) for split, text in
            conn.sql(f'SELECT split, text FROM datasets."{name}" ORDER BY row_number').fetchall()]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_every_layout_in_every_format_reads_to_the_same_canonical_pair(tmp_path, fmt):
    for layout, record in LAYOUTS.items():
        # Parquet types a column once per file: one file per layout, in every format alike.
        write_records(tmp_path / "c" / f"{layout}.{fmt}", [record], fmt)
    write_records(tmp_path / "c" / f"trl_text.{fmt}", [{"prompt": QUESTION, "chosen": GOOD, "rejected": BAD}], fmt)
    with read_corpus(pairs_corpus(fmt=fmt), tmp_path / "c") as raw:
        rows = raw.rows.to_table().to_pylist()
        assert raw.rejects.count_rows() == 0
    by_file = {Path(r["source_uri"]).stem: r for r in rows}
    assert set(by_file) == {*LAYOUTS, "trl_text"}
    assert {layout: by_file[layout]["text"] for layout in LAYOUTS} == {layout: CANONICAL for layout in LAYOUTS}
    assert json.loads(by_file["trl_text"]["text"]) == {"prompt": [{"role": "user", "content": QUESTION}],
                                                      "chosen": GOOD, "rejected": BAD}
    assert all(r["label"] is None and r["row_number"] == 1 for r in rows)


def test_preference_fields_name_the_fields_and_override_detection(tmp_path):
    # `prompt` and `conversations` would make the record ambiguous; named fields settle it.
    record = {"question": QUESTION, "good": [assistant(GOOD)], "bad": BAD, "prompt": "not this",
              "conversations": []}
    write_records(tmp_path / "c" / "a.jsonl", [record, {"other": 1}], "jsonl")
    corpus = pairs_corpus(preference_fields={"prompt": "question", "chosen": "good", "rejected": "bad"})
    with read_corpus(corpus, tmp_path / "c") as raw:
        assert [r["text"] for r in raw.rows.to_table().to_pylist()] == [json.dumps(
            {"prompt": [{"role": "user", "content": QUESTION}], "chosen": GOOD, "rejected": BAD})]
        (reject,) = raw.rejects.to_table().to_pylist()
    assert reject["line"] == 2 and "none of the preference_fields 'question', 'good', 'bad' is set" in reject["error"]


@pytest.mark.parametrize("record, expected", [
    ({"question": QUESTION, "answer": GOOD},
     "no known preference layout: expected TRL (prompt, chosen, rejected), OpenAI (input.messages, preferred_output, "
     "non_preferred_output) or ShareGPT (conversations, chosen, rejected); the record has question, answer; name its "
     "fields in the corpus' preference_fields"),
    ({"prompt": QUESTION, "conversations": [{"from": "human", "value": QUESTION}], "chosen": GOOD, "rejected": BAD},
     "fields of more than one preference layout: TRL (prompt, chosen, rejected) and ShareGPT (conversations, chosen, "
     "rejected)"),
    ({"input": {"messages": PROMPT}, "chosen": GOOD, "rejected": BAD},
     "fields of more than one preference layout: TRL (chosen, rejected) and OpenAI (input)"),
    ({"prompt": [{"role": "robot", "content": QUESTION}], "chosen": GOOD, "rejected": BAD},
     "field 'prompt'[0] must be a chat message {'role': one of ('system', 'user', 'assistant'), 'content': text} or "
     "a ShareGPT turn"),
    ({"prompt": PROMPT + [assistant(GOOD)], "chosen": GOOD, "rejected": BAD},
     "field 'prompt' must end with the user's message, which the answers reply to; it ends with a assistant message"),
    ({"input": {"turns": PROMPT}, "preferred_output": [assistant(GOOD)], "non_preferred_output": [assistant(BAD)]},
     "field 'input' must be a text, a list of messages or {'messages': [...]}"),
    ({"prompt": QUESTION, "chosen": [assistant(GOOD), assistant(BAD)], "rejected": BAD},
     "field 'chosen' must hold one answer, the assistant's message; it holds 2 messages"),
    ({"prompt": QUESTION, "chosen": {"from": "human", "value": GOOD}, "rejected": BAD},
     "field 'chosen' must be the assistant's answer, not a user message"),
    ({"chosen": PROMPT + [assistant(GOOD)], "rejected": [PROMPT[0], {"role": "user", "content": "Other?"},
                                                         assistant(BAD)]},
     "fields 'chosen' and 'rejected' hold whole conversations (the record has no prompt), so they must be the same "
     "up to their last message, the answer; they differ at message 2"),
    ({"chosen": PROMPT + [assistant(GOOD)], "rejected": BAD},
     "field 'rejected' must be a conversation (a list of messages) as the other answer is"),
    ({"chosen": PROMPT, "rejected": PROMPT + [assistant(BAD)]},
     "field 'chosen' must end with the assistant's answer; it ends with a user message"),
])
def test_a_record_in_no_layout_two_layouts_or_malformed_is_rejected_naming_the_field(tmp_path, record, expected):
    write_records(tmp_path / "c" / "a.jsonl", [record], "jsonl")
    with read_corpus(pairs_corpus(), tmp_path / "c") as raw:
        assert raw.rows.count_rows() == 0
        (reject,) = raw.rejects.to_table().to_pylist()
    assert reject["line"] == 1 and reject["error"].startswith("ValueError: ") and expected in reject["error"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_a_message_content_that_is_not_text_is_wrong_type_in_every_format(warehouse, tmp_path, fmt):
    # Two files: a parquet column holds text or lists, not both.
    write_records(tmp_path / "c" / f"a.{fmt}", [pair("Fine?")], fmt)
    write_records(tmp_path / "c" / f"b.{fmt}", [{"prompt": [{"role": "user", "content": ["a", "list"]}],
                                                 "chosen": GOOD, "rejected": BAD}], fmt)
    write_raw(warehouse, "c", read_corpus(pairs_corpus(fmt=fmt), tmp_path / "c"))
    build_dataset(warehouse, pairs(test_fraction=0.5))
    assert quarantine(warehouse) == [(1, "wrong_type", f"{WRONG_TYPE}field 'prompt'[0].content holds a JSON list, "
                                                       "not text")]


def test_malformed_pairs_are_quarantined_with_the_reason_and_the_field(warehouse, tmp_path):
    good = [pair(f"Question {i}?") for i in range(6)]
    bad = [
        {"prompt": "Same?", "chosen": "Yes.", "rejected": "  Yes.\n"},       # 7: identical_answers
        {"prompt": "Blank?", "chosen": "Yes.", "rejected": " \t\u00a0"},    # 8: empty_answer (rejected)
        {"prompt": "Blank both?", "chosen": "", "rejected": "\n"},           # 9: empty_answer (both)
        {"prompt": "Missing?", "chosen": "Yes."},                            # 10: missing_answer (rejected)
        {"prompt": "Missing both?"},                                         # 11: missing_answer (both)
        {"input": {"messages": []}, "preferred_output": [assistant("Yes.")],
         "non_preferred_output": [assistant("No.")]},                        # 12: empty_prompt (no message)
        {"prompt": [PROMPT[0], {"role": "user", "content": " \n "}], "chosen": "Y.", "rejected": "N."},  # 13
        {"prompt": "Nul?", "chosen": "Yes\u0000.", "rejected": "No."},      # 14: nul_byte
        {"prompt": "Long? " + "x" * 300, "chosen": "Yes.", "rejected": "No."},   # 15: too_long
        {"prompt": "Type?", "chosen": {"role": "assistant", "content": 5}, "rejected": "No."},  # 16: wrong_type
    ]
    lines = [json.dumps(r) for r in good + bad] + ['{"prompt": "Cut off?", "chosen": ']  # 17: unparseable
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text("\n".join(lines) + "\n")
    write_raw(warehouse, "c", read_corpus(pairs_corpus(), tmp_path / "c"))
    summary = build_dataset(warehouse, pairs(max_chars=300))
    rows = quarantine(warehouse)
    assert [(position, reason, detail) for position, reason, detail in rows if reason != "unparseable"] == [
        (7, "identical_answers", "chosen and rejected are the same answer (after trimming whitespace)"),
        (8, "empty_answer", "rejected is blank"),
        (9, "empty_answer", "chosen and rejected are blank"),
        (10, "missing_answer", "rejected is missing"),
        (11, "missing_answer", "chosen and rejected are missing"),
        (12, "empty_prompt", "prompt: it has no message"),
        (13, "empty_prompt", "prompt: the user's message, which the answers reply to, is blank"),
        (14, "nul_byte", "NUL byte in chosen: a corrupt or binary record"),
        (15, "too_long", f"{len(json.dumps(pair(bad[8]['prompt'])))} characters, limit 300"),
        (16, "wrong_type", f"{WRONG_TYPE}field 'chosen'.content holds a number, not text"),
    ]
    ((position, _, detail),) = [r for r in rows if r[1] == "unparseable"]
    assert position == 17 and detail.startswith("JSONDecodeError: ")
    assert summary.clean_rows == 6 and summary.quarantined == 11 and summary.accounted
    # A quarantined pair keeps what was read, for whoever fixes the file.
    text = warehouse.sql('SELECT text FROM datasets."d__quarantine" WHERE reason = \'missing_answer\' '
                         'ORDER BY row_number LIMIT 1').fetchall()[0][0]
    assert json.loads(text) == {"prompt": [{"role": "user", "content": "Missing?"}], "chosen": "Yes.", "rejected": None}


def test_identical_pairs_are_duplicates_whatever_their_layout(warehouse, tmp_path):
    records = [LAYOUTS["trl"], LAYOUTS["openai"], LAYOUTS["sharegpt"],
               {**LAYOUTS["trl"], "rejected": [assistant("Ashford lies on the river Dorran.")]}]
    ingest(warehouse, tmp_path, records)
    summary = build_dataset(warehouse, pairs(test_fraction=0.2))
    assert summary.clean_rows == 2 and summary.duplicates == 2 and summary.accounted
    first = warehouse.sql('SELECT row_id FROM datasets."d" WHERE row_number = 1').fetchall()[0][0]
    assert warehouse.sql('SELECT row_number, duplicate_of FROM datasets."d__duplicates" ORDER BY 1').fetchall() == [
        (2, first), (3, first)]


def test_the_split_keeps_every_pair_of_one_prompt_together(warehouse, tmp_path):
    # Three pairs per prompt, with different answers; one prompt's copies differ only in spacing.
    records = [pair(f"Which river does town {i} lie on?", f"River {i}.", f"River {i + k + 1}.")
               for i in range(40) for k in range(3)]
    records += [pair("Which river  does town 0\nlie on? ", "River zero.", "River one.")]
    ingest(warehouse, tmp_path, records)
    d = pairs(validation_fraction=0.3, test_fraction=0.3)
    summary = build_dataset(warehouse, d)
    assert summary.clean_rows == 121 and summary.accounted
    splits_of = {}
    for split, p in clean_pairs(warehouse):
        splits_of.setdefault(" ".join(p["prompt"][-1]["content"].split()), set()).add(split)
    assert len(splits_of) == 40 and all(len(s) == 1 for s in splits_of.values())
    assert {s for (s,) in splits_of.values()} == {"train", "validation", "test"}
    assert not check(warehouse, "datasets.d", clean_rows_contract(d))


def test_a_pair_on_a_test_prompt_is_quarantined_so_no_prompt_is_on_both_sides(warehouse, tmp_path):
    main = [pair("Shared?", "Yes, shared.", "No."), pair("Only main?"), pair("Only main 2?"),
            pair("Tested but broken?", "Yes.", "Nope."), pair("Shared?", "Also shared.", "No.", system=SYSTEM)]
    test = [pair("Shared?", "Yes.", "No!"), pair("Only test?"), pair("Tested but broken?", "Same.", "Same.")]
    ingest(warehouse, tmp_path, main, name="m")
    ingest(warehouse, tmp_path, test, name="t")
    d = pairs(corpus="m", test_corpus="t")
    summary = build_dataset(warehouse, d)
    assert quarantine(warehouse) == [
        (1, "prompt_in_test", "the prompt is also a prompt of the test corpus t"),
        (3, "identical_answers", "chosen and rejected are the same answer (after trimming whitespace)")]
    # The test pair with identical answers is not a test prompt, so the main pair on it stays; a system
    # message makes another prompt.
    by_split = {}
    for split, p in clean_pairs(warehouse):
        by_split.setdefault(split, []).append(p["prompt"][-1]["content"])
    assert sorted(by_split["test"]) == ["Only test?", "Shared?"]
    assert sorted(by_split.get("train", []) + by_split.get("validation", [])) == [
        "Only main 2?", "Only main?", "Shared?", "Tested but broken?"]
    assert summary.raw_records == 8 and summary.accounted
    assert not check(warehouse, "datasets.d", clean_rows_contract(d))


def test_the_contract_passes_a_clean_build_and_names_each_forged_row(warehouse, tmp_path):
    ingest(warehouse, tmp_path, [pair(f"Question {i}?", f"Yes {i}.", f"No {i}.") for i in range(30)]
           + [pair("Question 0?", "Yes again.", "No again.")])
    d = pairs(validation_fraction=0.2, test_fraction=0.3)
    build_dataset(warehouse, d)
    assert not check(warehouse, "datasets.d", clean_rows_contract(d))
    forged = {  # each on a prompt of its own, which no other row shares
        2: "not json",
        3: json.dumps({"prompt": "a text", "chosen": "Y.", "rejected": "N."}),
        4: json.dumps({"prompt": [{"role": "user", "content": "Q4?"}], "chosen": 5, "rejected": "N."}),
        5: json.dumps({"prompt": [{"role": "robot", "content": "Q5?"}], "chosen": "Y.", "rejected": "N."}),
        6: json.dumps({"prompt": [{"role": "user"}], "chosen": "Y.", "rejected": "N."}),
        7: json.dumps({"prompt": [], "chosen": "Y.", "rejected": "N."}),
        8: json.dumps({"prompt": [{"role": "user", "content": "Q8?"}, assistant("A.")], "chosen": "Y.", "rejected": "N."}),
        9: json.dumps({"prompt": [{"role": "user", "content": "Q9?"}], "chosen": "Y.", "rejected": " Y.\n"}),
        10: json.dumps({"prompt": [{"role": "user", "content": "Q10?"}], "chosen": "\u00a0", "rejected": "N."}),
    }
    for row_number, text in forged.items():
        warehouse.execute('UPDATE datasets."d" SET text = ? WHERE row_number = ?', [text, row_number])
    # The pairs of Question 0 are in one split; moving one of them puts the prompt in two.
    warehouse.execute('UPDATE datasets."d" SET split = CASE split WHEN \'test\' THEN \'train\' ELSE \'test\' END '
                      "WHERE row_number = 31")
    failures = {f.requirement: sorted(s["row_number"] for s in f.sample) + [f.rows]
                for f in check(warehouse, "datasets.d", clean_rows_contract(d))}
    assert failures == {
        'is a preference pair: {"prompt": [{"role", "content": text}, ...], "chosen": text, "rejected": text}':
            [2, 3, 4, 5, 6, 5],
        # the first five of six: 2, 3, 5, 6, 7 and 8 (its prompt ends with the assistant's message)
        "has a prompt that ends with a non-blank user message": [2, 3, 5, 6, 7, 6],
        "has a non-blank chosen and rejected answer, different from each other": [2, 9, 10, 3],
        "a prompt sits in one split only (none in train or validation and in test)": [1, 31, 2],
    }


def test_redaction_rewrites_the_pair_inside_its_json_strings(warehouse, tmp_path):
    ingest(warehouse, tmp_path, [pair("Mail me?", "Write to\nbob@example.org.", "Write to me."), pair("Other?")])
    summary = build_dataset(warehouse, pairs(redact=["email"], validation_fraction=0.0, test_fraction=0.5))
    assert summary.redacted == {"email": 1}
    chosen = [p["chosen"] for _, p in clean_pairs(warehouse)]
    assert "Write to\n[EMAIL]." in chosen


def test_the_json_format_reads_text_and_instruction_records_too(tmp_path):
    write_records(tmp_path / "t" / "a.json", [{"text": "one", "label": "x"}, {"text": 5, "label": "y"},
                                              {"label": "x"}, ["not", "an", "object"]], "json")
    (tmp_path / "t" / "b.json").write_bytes(b"\xef\xbb\xbf  [ {\"text\": \"bom\", \"label\": \"z\"} ]")
    (tmp_path / "t" / "c.json").write_text("")  # an empty file: no records
    with read_corpus(CorpusConfig(name="t", path="t", format="json", label_field="label"), tmp_path / "t") as raw:
        rows = [(Path(r["source_uri"]).name, r["row_number"], r["text"], r["label"]) for r in raw.rows.to_table().to_pylist()]
        rejects = [(r["line"], r["error"], r["raw_line"]) for r in raw.rejects.to_table().to_pylist()]
    assert rows == [("a.json", 1, "one", "x"), ("a.json", 2, "5", "y"), ("b.json", 1, "bom", "z")]
    assert [line for line, *_ in rejects] == [3, 4]
    assert "missing field(s) 'text'" in rejects[0][1] and "expected a JSON object, got list" in rejects[1][1]
    assert json.loads(rejects[1][2]) == ["not", "an", "object"]

    conversation = {"messages": [{"role": "user", "content": "Hi?"}, assistant("Hello.")]}
    write_records(tmp_path / "q" / "a.json", [{"instruction": "Name one.", "response": "One."}, conversation], "json")
    with read_corpus(CorpusConfig(name="q", path="q", format="json", record="instruction"), tmp_path / "q") as raw:
        assert [json.loads(r["text"]) for r in raw.rows.to_table().to_pylist()] == [
            [{"role": "user", "content": "Name one."}, assistant("One.")], conversation["messages"]]


def test_a_bad_element_of_a_json_array_is_a_reject_at_its_index_and_a_broken_array_rejects_the_file(
        warehouse, tmp_path):
    landing = tmp_path / "c"
    landing.mkdir()
    (landing / "a.json").write_text('[{"prompt": "One?", "chosen": "Y.", "rejected": "N."},\n 5,\n'
                                    ' {"prompt": "Three?", "chosen": "Y.", "rejected": "N.",},\n'
                                    ' {"prompt": "Four?", "chosen": "Y.", "rejected": "N."}]')
    (landing / "b.json").write_text('{"prompt": "An object, not an array?", "chosen": "Y.", "rejected": "N."}')
    (landing / "c.json").write_text('[{"prompt": "Cut off?", "chosen": "Y.", "rejec')
    write_raw(warehouse, "c", read_corpus(pairs_corpus(fmt="json"), landing))
    summary = build_dataset(warehouse, pairs(test_fraction=0.5))
    assert [(p["prompt"][0]["content"]) for _, p in clean_pairs(warehouse)] == ["One?", "Four?"]
    assert warehouse.sql('SELECT row_number FROM datasets."d" ORDER BY 1').fetchall() == [(1,), (4,)]
    rows = warehouse.sql('SELECT source_uri, line, reason, detail, text FROM datasets."d__quarantine" '
                         "ORDER BY source_uri, line").fetchall()
    assert [(Path(uri).name, line, reason) for uri, line, reason, _, _ in rows] == [
        ("a.json", 2, "unparseable"), ("a.json", 3, "unparseable"), ("b.json", None, "rejected_file"),
        ("c.json", None, "rejected_file")]
    assert "expected a JSON object, got int" in rows[0][3] and rows[0][4] == "5"
    assert rows[1][3].startswith("JSONDecodeError: ") and '"Three?"' in rows[1][4]
    assert (f"file {(landing / 'b.json').as_uri()} holds a JSON object at its top level, not an array of records"
            in rows[2][3]) and "format: jsonl" in rows[2][3]
    assert "is not a readable JSON array" in rows[3][3]
    assert summary.accounted and summary.raw_records == 6


def test_the_town_preferences_sample_reads_as_preference_records_alone(warehouse):
    landing = REPO / "data" / "raw" / "town_preferences"
    files = sorted(p.name for p in landing.iterdir())
    write_raw(warehouse, "p", read_corpus(pairs_corpus("p"), landing))
    summary = build_dataset(warehouse, pairs(corpus="p", validation_fraction=0.1, test_fraction=0.15))
    assert summary.accounted and summary.raw_records == summary.clean_rows and 240 <= summary.clean_rows <= 300
    per_file = dict(warehouse.sql('SELECT source_uri, count(*) FROM datasets."d" GROUP BY 1').fetchall())
    assert sorted(Path(uri).name for uri in per_file) == files and len(files) == 2
    assert all(rows >= 100 for rows in per_file.values())


@pytest.mark.skipif(not ORCA_TRAIN.exists(), reason="the shared orca_dpo_pairs data is not on this machine")
def test_orca_dpo_pairs_read_as_preference_records_without_a_field_mapping(warehouse):
    write_raw(warehouse, "orca", read_corpus(pairs_corpus("orca"), ORCA_TRAIN))
    assert warehouse.sql('SELECT count(*) FROM raw."orca"').fetchall() == [(222,)]
    assert warehouse.sql('SELECT count(*) FROM raw."orca__rejects"').fetchall() == [(0,)]
    # At the default max_chars (2000) most pairs are too long: their answers run to hundreds of tokens.
    default = build_dataset(warehouse, pairs(corpus="orca"))
    assert default.accounted and (default.clean_rows, default.quarantine_by_reason) == (41, {"too_long": 181})
    roomy = build_dataset(warehouse, pairs(corpus="orca", max_chars=20_000))
    assert roomy.accounted and roomy.clean_rows == 222
    first = json.loads(warehouse.sql('SELECT text FROM datasets."d" ORDER BY row_number LIMIT 1').fetchall()[0][0])
    assert [m["role"] for m in first["prompt"]] == ["system", "user"] and first["chosen"].startswith("Step 1:")


PREFERENCE_PROJECT = {
    "corpora": [{"name": "pairs", "path": "raw/pairs/", "format": "json", "record": "preference"},
                {"name": "qa", "path": "raw/qa/", "format": "json", "record": "instruction"},
                {"name": "lines", "path": "raw/lines/", "format": "json"},
                {"name": "tickets", "path": "raw/t/", "format": "json", "label_field": "label"}],
    "datasets": [{"name": "prefs", "corpus": "pairs", "task": "preference", "champion": {"metric": "reward_margin"}}],
}


def test_a_preference_project_loads_with_its_metrics(tmp_path):
    from ft_assets.lib.config import TASK_METRICS, load_config
    from ft_assets_tests.helpers import write_config

    config = load_config(write_config(tmp_path, PREFERENCE_PROJECT))
    assert config.dataset("prefs").task == "preference" and config.corpus("pairs").preference_fields is None
    assert TASK_METRICS["preference"] == ("preference_accuracy", ("preference_accuracy", "reward_margin"))


@pytest.mark.parametrize("change, expected", [
    ({"datasets": [{"name": "d", "corpus": "qa", "task": "preference"}]},
     "datasets[0] (d): field corpus: corpus 'qa' holds instruction records; a preference dataset needs "
     "`record: preference`"),
    ({"datasets": [{"name": "d", "corpus": "pairs", "task": "instruction"}]},
     "corpus 'pairs' holds preference records; an instruction dataset needs `record: instruction`"),
    ({"datasets": [{"name": "d", "corpus": "pairs", "task": "language_modeling"}]},
     "corpus 'pairs' holds preference records; a language_modeling dataset reads text records"),
    ({"datasets": [{"name": "d", "corpus": "pairs"}]},
     "corpus 'pairs' holds preference records; a classification dataset reads text records with a label_field"),
    ({"datasets": [{"name": "d", "corpus": "tickets", "test_corpus": "pairs"}]}, "field test_corpus: corpus 'pairs'"),
    ({"datasets": [{"name": "d", "corpus": "pairs", "task": "preference", "champion": {"metric": "rouge_l"}}]},
     "'rouge_l' is not a preference metric (one of: preference_accuracy, reward_margin)"),
    ({"corpora": [{"name": "pairs", "path": "p", "format": "csv", "record": "preference"}]},
     "preference records are read from jsonl, json or parquet, not 'csv'"),
    ({"corpora": [{"name": "pairs", "path": "p", "format": "jsonl", "record": "preference", "label_field": "y"}]},
     "preference records have no label; drop label_field"),
    ({"corpora": [{"name": "pairs", "path": "p", "format": "jsonl", "preference_fields":
                   {"prompt": "q", "chosen": "a", "rejected": "b"}}]}, "preference_fields is for `record: preference`"),
    ({"corpora": [{"name": "pairs", "path": "p", "format": "jsonl", "record": "preference",
                   "preference_fields": {"prompt": "q", "chosen": "a"}}]}, "field preference_fields.rejected: Field required"),
    ({"corpora": [{"name": "pairs", "path": "p", "format": "jsonl", "record": "preference",
                   "preference_fields": {"prompt": "q", "chosen": "a", "rejected": "a"}}]}, "three different fields"),
    ({"corpora": [{"name": "pairs", "path": "p", "format": "json", "columns": ["text"]}]},
     "columns is only for header-less csv/tsv, not format 'json'"),
])
def test_preference_settings_that_cannot_work_fail_at_load_naming_the_entry(tmp_path, change, expected):
    from ft_assets.lib.config import ConfigError, load_config
    from ft_assets_tests.helpers import write_config

    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, {**PREFERENCE_PROJECT, **change}))
    assert expected in str(error.value)


def test_the_dataset_asset_builds_a_preference_dataset_with_its_checks(tmp_path):
    import shutil

    import dagster as dg
    import yaml

    from ft_assets.defs import build_definitions
    from ft_assets.lib.config import load_config
    from ft_assets_tests.helpers import materialize_all

    shutil.copytree(REPO / "data" / "raw" / "town_preferences", tmp_path / "data" / "raw" / "town_preferences")
    (tmp_path / "project.yaml").write_text(yaml.safe_dump({
        "storage": {"root": "data"},
        "corpora": [{"name": "town_preferences", "path": "raw/town_preferences/", "format": "jsonl",
                     "record": "preference"}],
        "datasets": [{"name": "town_preferences", "corpus": "town_preferences", "task": "preference",
                      "validation_fraction": 0.1, "test_fraction": 0.15}],
    }))
    defs = build_definitions(load_config(tmp_path / "project.yaml"))
    result = materialize_all(defs, dg.DagsterInstance.ephemeral())
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"raw_contract": True, "contract": True, "row_accounting": True}
    (materialization,) = [m for m in result.get_asset_materialization_events()
                          if m.asset_key.path == ["datasets", "town_preferences"]]
    metadata = materialization.materialization.metadata
    assert metadata["dagster/row_count"].value == 270 and metadata["quarantined"].value == 0
    assert "by prompt" in defs.resolve_assets_def(dg.AssetKey(["datasets", "town_preferences"])).descriptions_by_key[
        dg.AssetKey(["datasets", "town_preferences"])]
