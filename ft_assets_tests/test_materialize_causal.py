"""Pretrain from scratch, then instruction-tune: the causal-LM asset graph materialized for real."""

import json
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.lib.storage import folder_sha256
from ft_assets_tests.conftest import qa_conversations, story_lines
from ft_assets_tests.helpers import materialize_project

# Nats of loss on the texts the base knows that a recipe may add before its forgetting gate fails.
FORGETTING_CEILING = 0.05
TRAINING = {"epochs": 2, "batch_size": 8, "max_length": 96, "log_every_steps": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("causal_project")
    raw = tmp / "data" / "raw"
    (raw / "stories").mkdir(parents=True)
    (raw / "stories" / "a.txt").write_text("\n".join(story_lines(400)) + "\n")
    (raw / "general").mkdir()
    (raw / "general" / "g.txt").write_text("\n".join(story_lines(60, seed=7)) + "\n")
    (raw / "qa").mkdir()
    (raw / "qa" / "a.jsonl").write_text(
        "".join(json.dumps({"messages": json.loads(c)}) + "\n" for c in qa_conversations(120))
        + json.dumps({"instruction": "Unanswered?", "response": ""}) + "\n")
    config = {
        "storage": {"root": "data"},
        "corpora": [{"name": "stories", "path": "raw/stories/", "format": "txt"},
                    {"name": "general", "path": "raw/general/", "format": "txt"},
                    {"name": "qa", "path": "raw/qa/", "format": "jsonl", "record": "instruction"}],
        "datasets": [{"name": "stories", "corpus": "stories", "task": "language_modeling", "test_fraction": 0.2},
                     {"name": "qa", "corpus": "qa", "task": "instruction", "test_fraction": 0.2}],
        "recipes": [
            {"name": "pre", "dataset": "stories", "base_model": "scratch", "method": "full",
             "scratch": {"vocab_size": 320, "hidden_size": 32, "layers": 2, "heads": 2, "context": 128},
             "training": {**TRAINING, "learning_rate": 3e-3}},
            # Tuned hard, in full, on narrow Q&A: forgets the stories it was pretrained on, measured on
            # the base's own held-out stories (no corpus: the test split of datasets/stories).
            {"name": "qa_full", "dataset": "qa", "base_model": "checkpoint:pre", "method": "full",
             "forgetting": {}, "gates": {"max_forgetting": FORGETTING_CEILING},
             "training": {**TRAINING, "learning_rate": 3e-3, "packing": True}, "generation": {"max_new_tokens": 12}},
            {"name": "qa_lora", "dataset": "qa", "base_model": "checkpoint:pre", "method": "lora",
             "method_args": {"r": 4, "alpha": 8}, "export": "merged",
             "training": {**TRAINING, "learning_rate": 1e-2}, "generation": {"max_new_tokens": 12, "samples": 3}},
            # LoRA at a tiny learning rate: barely moves, so it forgets next to nothing.
            {"name": "qa_gentle", "dataset": "qa", "base_model": "checkpoint:pre", "method": "lora",
             "method_args": {"r": 4, "alpha": 8}, "forgetting": {"corpus": "general"},
             "gates": {"max_forgetting": FORGETTING_CEILING},
             "training": {**TRAINING, "epochs": 1, "learning_rate": 1e-6}, "generation": {"max_new_tokens": 4}},
        ],
    }
    return materialize_project(tmp, config)


def test_the_chain_materializes_in_dependency_order(project):
    config, defs, _, result = project
    # Only the Q&A champion fails: a 2-epoch toy model answers no test question better than its base
    # (ROUGE-L 0 for all), so no recipe passes beats_baselines and there is no champion to publish.
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["models__qa__champion"]
    materialized = [m.asset_key.to_user_string() for m in result.get_asset_materialization_events()]
    assert materialized.index("checkpoints/pre") < materialized.index("checkpoints/qa_full")
    assert {"reports/pre", "reports/qa_full", "reports/qa_lora", "reports/leaderboard/qa",
            "reports/leaderboard/stories"} <= set(materialized)
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey(["checkpoints", "pre"]) in graph.get(dg.AssetKey(["checkpoints", "qa_lora"])).parent_keys
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[("datasets/qa", "contract")] and checks[("datasets/qa", "row_accounting")]
    assert ("datasets/qa", "label_coverage") not in checks


def test_the_tuned_model_starts_from_the_pretrained_checkpoint(project):
    config, _, instance, _ = project
    pre = instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", "pre"]))
    pre_path = pre.asset_materialization.metadata["checkpoint_path"].value
    manifest = json.loads((config.root / "reports" / "qa_full" / "eval.json").read_text())
    tuned = json.loads((Path(manifest["checkpoint"]) / "manifest.json").read_text())
    assert tuned["task"] == "instruction" and tuned["base_model"]["id"] == "checkpoint:pre"
    assert tuned["base_model"]["path"] == pre_path
    # The base checkpoint's digest leaves out its model card, which its report has rewritten since.
    assert tuned["base_model"]["sha256"] == folder_sha256(Path(pre_path))
    pre_manifest = json.loads((Path(pre_path) / "manifest.json").read_text())
    assert pre_manifest["base_model"]["id"] == "scratch" and pre_manifest["task"] == "language_modeling"


def test_instruction_reports_score_generations_against_the_base(project):
    config, _, _, _ = project
    out = config.root / "reports" / "qa_lora"
    report = json.loads((out / "eval.json").read_text())
    for key in ("rouge_l", "exact_match", "perplexity", "eval_loss"):
        assert key in report and key in report["baselines"]["base"], key
    assert 0.0 <= report["exact_match"] <= 1.0 and report["perplexity"] > 1.0
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == report["n_test"] == report["metrics"]["n_generated"]
    assert set(generations[0]) == {"prompt", "reference", "generated", "base_generated"}
    assert len(report["samples"]) == 3 and "## Sample generations" in (out / "report.md").read_text()
    assert (out / "loss_curves.png").exists() and not (out / "confusion_matrix.png").exists()
    # Training lowered the answer loss below the pretrained base's.
    assert report["eval_loss"] < report["baselines"]["base"]["eval_loss"]


def test_forgetting_without_a_corpus_is_the_loss_increase_on_the_base_checkpoints_test_split(project):
    config, defs, _, _ = project
    report = json.loads((config.root / "reports" / "qa_full" / "eval.json").read_text())
    pre = json.loads((config.root / "reports" / "pre" / "eval.json").read_text())
    f = report["forgetting"]
    assert {k: f[k] for k in ("corpus", "dataset", "split", "kind")} == {
        "corpus": None, "dataset": "stories", "split": "test", "kind": "causal_lm"}
    # The very texts and scoring of the base's own test loss: its report's, on the same checkpoint.
    assert f["n_texts"] == pre["n_test"]
    assert f["base_loss"] == pytest.approx(pre["eval_loss"], rel=1e-6)
    assert f["loss_increase"] == pytest.approx(f["tuned_loss"] - f["base_loss"])
    assert "on the base's held-out text (datasets/stories, test split)" in (
        config.root / "reports" / "qa_full" / "report.md").read_text()
    card = (Path(report["checkpoint"]) / "README.md").read_text()
    assert "Forgetting, on the base's held-out text (datasets/stories, test split)" in card
    # The report reads the base's dataset, not a raw corpus.
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["reports", "qa_full"])).parent_keys == {
        dg.AssetKey(["checkpoints", "qa_full"]), dg.AssetKey(["datasets", "stories"])}


def test_forgetting_on_a_corpus_is_the_loss_increase_on_its_texts(project):
    config, _, _, _ = project
    gentle = json.loads((config.root / "reports" / "qa_gentle" / "eval.json").read_text())["forgetting"]
    assert {k: gentle[k] for k in ("corpus", "dataset", "split", "kind", "n_texts")} == {
        "corpus": "general", "dataset": None, "split": None, "kind": "causal_lm", "n_texts": 60}
    full = json.loads((config.root / "reports" / "qa_full" / "eval.json").read_text())["forgetting"]
    # Other texts than the base's test split: another base loss.
    assert gentle["base_loss"] != pytest.approx(full["base_loss"], rel=1e-6)
    assert "forgetting" not in json.loads((config.root / "reports" / "qa_lora" / "eval.json").read_text())
    rows = json.loads((config.root / "reports" / "leaderboard" / "qa" / "leaderboard.json").read_text())["rows"]
    assert {r["recipe"]: r["forgetting"] for r in rows} == {
        "qa_full": full["loss_increase"], "qa_lora": None, "qa_gentle": gentle["loss_increase"]}
    markdown = (config.root / "reports" / "leaderboard" / "qa" / "leaderboard.md").read_text()
    assert "qa_full: the base's held-out text (datasets/stories, test split)" in markdown
    assert "qa_gentle: general text (corpus `general`)" in markdown


def test_hard_full_tuning_fails_the_forgetting_gate_and_gentle_lora_passes_it(project):
    _, _, _, result = project
    checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()
              if e.check_name == "forgetting_ceiling"}
    assert set(checks) == {"reports/qa_full", "reports/qa_gentle"}
    full, gentle = checks["reports/qa_full"], checks["reports/qa_gentle"]
    assert full.metadata["forgetting"].value > FORGETTING_CEILING and not full.passed
    assert "loss increase on the base's held-out text (datasets/stories, test split)" in full.description
    assert "above the ceiling 0.05" in full.description
    assert "loss increase on general text (corpus `general`)" in gentle.description
    assert abs(gentle.metadata["forgetting"].value) < FORGETTING_CEILING and gentle.passed


def test_a_dataset_without_a_passing_recipe_has_no_champion_and_says_why(project):
    config, _, _, result = project
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "no recipe passed its gates (3 candidate(s))" in message
    assert "qa_full | 0.0000 | no | failed beats_baselines" in message and "forgetting_ceiling" in message
    assert not (config.root / "models" / "qa").exists()
    assert (config.root / "models" / "stories" / "champion" / "champion.json").exists()


def test_the_pretraining_report_and_leaderboards(project):
    config, _, _, _ = project
    pre = json.loads((config.root / "reports" / "pre" / "eval.json").read_text())
    assert pre["task"] == "language_modeling" and pre["perplexity"] < pre["baselines"]["base"]["perplexity"]
    card = (Path(pre["checkpoint"]) / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "base_model:" not in card.split("---")[1]
    assert "type: perplexity" in card and "a new model from scratch" in card
    rows = json.loads((config.root / "reports" / "leaderboard" / "qa" / "leaderboard.json").read_text())["rows"]
    assert {r["recipe"] for r in rows} == {"qa_full", "qa_lora", "qa_gentle"} and rows[0]["metric"] == "rouge_l"
    assert rows[0]["rouge_l"] >= rows[1]["rouge_l"]
    lora = next(r for r in rows if r["recipe"] == "qa_lora")
    assert lora["trainable_share"] < 0.5 and lora["tokens_per_sec"] > 0
    markdown = (config.root / "reports" / "leaderboard" / "qa" / "leaderboard.md").read_text()
    assert "ROUGE-L" in markdown and "exact match" in markdown


def test_a_merged_causal_export_is_a_plain_model(project):
    from transformers import AutoModelForCausalLM

    config, _, _, _ = project
    checkpoint = json.loads((config.root / "reports" / "qa_lora" / "eval.json").read_text())["checkpoint"]
    model = AutoModelForCausalLM.from_pretrained(f"{checkpoint}/merged")
    assert not any("lora" in name for name, _ in model.named_parameters())
