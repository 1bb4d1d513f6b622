"""Pretrain, instruction-tune, then preference-tune, and a reward model: the preference graph materialized for
real, with each reference case recorded where the report and the audit can read it."""

import json
import random

import dagster as dg
import pytest

from ft_assets_tests.conftest import COLOURS, THINGS, qa_conversations, story_lines
from ft_assets_tests.helpers import materialize_project

TRAINING = {"epochs": 2, "batch_size": 8, "max_length": 96, "log_every_steps": 2}


def colour_pairs(n: int, seed: int = 0) -> list[dict]:
    """TRL-layout pairs: the preferred answer repeats the prompt's colour, the other evades, in words the tiny BERT
    knows (its fixture vocabulary), shorter or longer by turns so that length alone predicts nothing."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        thing, colour = rng.choice(THINGS), rng.choice(COLOURS)
        evasion = "not today" if i % 2 else "please help my order is not working today again"
        rows.append({"prompt": f"The {thing} is {colour}. What colour is the {thing}?",
                     "chosen": f"The {thing} is {colour}.", "rejected": evasion})
    return rows


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("preference_project")
    raw = tmp / "data" / "raw"
    for folder in ("stories", "qa", "pairs"):
        (raw / folder).mkdir(parents=True)
    (raw / "stories" / "a.txt").write_text("\n".join(story_lines(400)) + "\n")
    (raw / "qa" / "a.jsonl").write_text("".join(json.dumps({"messages": json.loads(c)}) + "\n"
                                                for c in qa_conversations(120)))
    pairs = colour_pairs(160)
    # One malformed pair of each kind the cleaning quarantines.
    bad = [{"prompt": "What colour?", "chosen": "Red.", "rejected": "Red."},
           {"prompt": "What colour?", "chosen": "", "rejected": "Blue."},
           {"prompt": "What colour?", "rejected": "Blue."},
           {"prompt": " ", "chosen": "Red.", "rejected": "Blue."}]
    (raw / "pairs" / "a.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs + bad))
    sft = {"training": {**TRAINING, "learning_rate": 3e-3}, "generation": {"max_new_tokens": 8}}
    config = {
        "storage": {"root": "data"},
        "corpora": [{"name": "stories", "path": "raw/stories/", "format": "txt"},
                    {"name": "qa", "path": "raw/qa/", "format": "jsonl", "record": "instruction"},
                    {"name": "pairs", "path": "raw/pairs/", "format": "jsonl", "record": "preference"}],
        "datasets": [{"name": "stories", "corpus": "stories", "task": "language_modeling", "test_fraction": 0.2},
                     {"name": "qa", "corpus": "qa", "task": "instruction", "test_fraction": 0.2},
                     {"name": "pairs", "corpus": "pairs", "task": "preference", "test_fraction": 0.2}],
        "recipes": [
            {"name": "pre", "dataset": "stories", "base_model": "scratch", "method": "full",
             "scratch": {"vocab_size": 320, "hidden_size": 32, "layers": 2, "heads": 2, "context": 128},
             "training": {**TRAINING, "learning_rate": 3e-3}},
            {"name": "sft_full", "dataset": "qa", "base_model": "checkpoint:pre", "method": "full", **sft},
            {"name": "sft_lora", "dataset": "qa", "base_model": "checkpoint:pre", "method": "lora",
             "method_args": {"r": 4, "alpha": 8}, **sft},
            # LoRA on the full SFT model: the reference is that model, the adapter switched off.
            {"name": "dpo", "dataset": "pairs", "base_model": "checkpoint:sft_full", "method": "lora",
             "method_args": {"r": 4, "alpha": 8}, "objective": "dpo",
             "training": {**TRAINING, "learning_rate": 1e-2}, "generation": {"max_new_tokens": 8}},
            # Continues the SFT adapter: the reference is the SFT model, never the bare pretrained base.
            {"name": "dpo_on_adapter", "dataset": "pairs", "base_model": "checkpoint:sft_lora", "method": "lora",
             "method_args": {"r": 4, "alpha": 8}, "objective": "dpo", "objective_args": {"precompute_reference": True},
             "training": {**TRAINING, "learning_rate": 1e-2}, "generation": {"max_new_tokens": 8}},
            {"name": "reward", "dataset": "pairs", "base_model": str(tiny_model_dir), "method": "full",
             "objective": "reward", "training": {**TRAINING, "learning_rate": 1e-3, "max_length": 48}},
        ],
    }
    return materialize_project(tmp, config)


def _report(config, recipe: str) -> dict:
    return json.loads((config.root / "reports" / recipe / "eval.json").read_text())


def test_the_preference_graph_materializes_with_its_checks(project):
    config, _, _, result = project
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert {"datasets/pairs", "checkpoints/dpo", "checkpoints/dpo_on_adapter", "checkpoints/reward",
            "reports/dpo", "reports/dpo_on_adapter", "reports/reward", "reports/leaderboard/pairs"} <= materialized
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[("datasets/pairs", "contract")] and checks[("datasets/pairs", "row_accounting")]
    assert ("reports/dpo", "beats_baselines") in checks


def test_each_report_carries_the_preference_figures_beside_the_same_keys_for_its_baselines(project):
    config, *_ = project
    for recipe in ("dpo", "dpo_on_adapter", "reward"):
        report = _report(config, recipe)
        assert report["task"] == "preference" and report["n_test"] > 0
        assert 0.0 <= report["preference_accuracy"] <= 1.0
        for name in ("reference", "length"):
            baseline = report["baselines"][name]
            assert {"preference_accuracy", "reward_margin", "n"} <= set(baseline)
        assert [g["name"] for g in report["gates"]] == ["beats_baselines"]
        assert "preference accuracy" in (config.root / "reports" / recipe / "report.md").read_text()
    causal = _report(config, "dpo")
    assert {"rouge_l", "exact_match"} <= set(causal["metrics"]) and {"rouge_l"} <= set(causal["baselines"]["reference"])
    assert causal["samples"] and "base_generated" in causal["samples"][0]
    # Learnable in two epochs: the reward model ranks the answer first more often than its untuned head and
    # than length alone (half the pairs each way); the SFT model already prefers it, DPO keeps that, and its
    # implicit reward says training moved the odds further towards the preferred answer.
    reward = _report(config, "reward")
    assert reward["preference_accuracy"] > max(b["preference_accuracy"] for b in reward["baselines"].values())
    assert abs(causal["baselines"]["length"]["preference_accuracy"] - 0.5) < 0.2
    assert causal["preference_accuracy"] >= causal["baselines"]["reference"]["preference_accuracy"]
    assert causal["metrics"]["implicit_reward_margin"] > 0 and causal["metrics"]["implicit_reward_accuracy"] > 0.5


def test_the_reference_of_each_recipe_is_recorded_as_the_model_it_started_from(project):
    config, _, instance, _ = project

    def manifest(recipe):
        event = instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", recipe]))
        return event.asset_materialization.metadata["manifest"].data

    sft_lora = instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", "sft_lora"]))
    sft_lora_path = sft_lora.asset_materialization.metadata["checkpoint_path"].path
    on_adapter = manifest("dpo_on_adapter")["train_info"]["reference"]
    assert on_adapter["kind"] == "sft_adapter" and on_adapter["path"] == sft_lora_path
    assert manifest("dpo")["train_info"]["reference"]["kind"] == "adapter_disabled"
    assert manifest("reward")["train_info"]["objective"] == "reward"
    assert list((config.root / "cache" / "reference_logps").glob("*.json"))  # precompute_reference's cache


def test_malformed_pairs_are_quarantined_with_their_reasons(project):
    config, *_ = project
    import duckdb

    with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
        reasons = dict(conn.sql('SELECT reason, count(*) FROM datasets."pairs__quarantine" GROUP BY 1').fetchall())
    assert reasons == {"identical_answers": 1, "empty_answer": 1, "missing_answer": 1, "empty_prompt": 1}


def test_the_bench_table_reads_every_preference_report(project, tmp_path, capsys):
    """bench/preference_results.py, which wrote the orca_dpo_pairs rows of bench/results/, over a real project."""
    import importlib.util
    from pathlib import Path

    config, *_ = project
    script = Path(__file__).resolve().parents[1] / "bench" / "preference_results.py"
    spec = importlib.util.spec_from_file_location("preference_results", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.jsonl"
    module.main(["--config", str(config._source), "--out", str(out), "--machine", "this test's"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["recipe"] for r in rows] == ["dpo", "dpo_on_adapter", "reward"]
    for row in rows:
        report = _report(config, row["recipe"])
        assert row["preference_accuracy"] == report["preference_accuracy"] and row["n_test"] == report["n_test"]
        assert row["baselines"]["length"]["preference_accuracy"] == report["baselines"]["length"]["preference_accuracy"]
    assert [r["objective"] for r in rows] == ["dpo", "dpo", "reward"]
    assert "| reward | reward (full) |" in capsys.readouterr().out
