"""The real Definitions, built from a project YAML over a tiny corpus and a tiny model, materialized."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets.lib.cost import TrainingCost
from ft_assets.lib.storage import sha256_file
from ft_assets_tests.conftest import write_csv, write_project
from ft_assets_tests.helpers import materialize_all


@pytest.fixture(scope="module")
def project(ticket_project):
    """The shared ticket project (conftest.ticket_project): its config, instance, run and raw file hashes."""
    return ticket_project.config, ticket_project.instance, ticket_project.result, ticket_project.raw_hashes


def test_every_asset_materializes_and_every_check_passes(project):
    config, _, result, _ = project
    assert result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert materialized == {"raw/tickets", "raw/general", "datasets/tickets", "reports/leaderboard/tickets",
                            "models/tickets/champion"} | {
        f"{kind}/{r}" for kind in ("checkpoints", "reports") for r in ("tiny_full", "tiny_lora", "tiny_head")}
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    # The gates of reports/ are test_champion.py's: two of the three recipes are meant to fail them.
    data_checks = {k: v for k, v in checks.items() if not k[0].startswith("reports/")}
    assert len(data_checks) >= 5 and all(data_checks.values()), data_checks


def test_training_progress_reaches_the_dagster_run_log(project):
    _, instance, result, _ = project
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    steps = [m for m in messages if m.startswith("step ") and "train_loss=" in m]
    assert steps, "no training step was logged through Dagster Pipes"
    assert any("eval_accuracy=" in m for m in messages)


def test_raw_files_are_untouched_and_every_row_is_accounted_for(project):
    config, _, _, raw_hashes = project
    assert {p: sha256_file(p) for p in raw_hashes} == raw_hashes
    conn = duckdb.connect(str(config.warehouse_path), read_only=True)
    reasons = dict(conn.sql('SELECT reason, count(*) FROM datasets."tickets__quarantine" GROUP BY 1').fetchall())
    assert reasons == {"empty_text": 1, "unknown_label": 1}
    assert conn.sql('SELECT count(*) FROM datasets."tickets__duplicates"').fetchall() == [(1,)]


def test_eval_json_and_report_exist_for_every_recipe(project):
    config, _, _, _ = project
    for recipe in config.recipes:
        out = config.root / "reports" / recipe.name
        report = json.loads((out / "eval.json").read_text())
        for key in ("accuracy", "macro_f1", "n_test"):
            assert isinstance(report[key], (int, float)), key
        assert TrainingCost.model_validate(report["cost"]).checkpoint_bytes > 0
        assert 0.0 <= report["accuracy"] <= 1.0 and report["n_test"] > 0
        assert "majority" in report["baselines"]
        assert ("base_head_only" in report["baselines"]) == (recipe.method != "head_only")
        assert sum(map(sum, report["metrics"]["confusion_matrix"])) == report["n_test"]
        markdown = (out / "report.md").read_text()
        assert "## Confusion matrix" in markdown
        for figure in ("loss_curves", "confusion_matrix"):
            assert (out / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"![{figure}]({figure}.png)" in markdown
    # The base+head baseline is head_only with the base's defaults: the tiny_head recipe exactly.
    head = json.loads((config.root / "reports" / "tiny_head" / "eval.json").read_text())
    for name in ("tiny_full", "tiny_lora"):
        report = json.loads((config.root / "reports" / name / "eval.json").read_text())
        assert report["baselines"]["base_head_only"]["accuracy"] == head["accuracy"], name


def test_every_checkpoint_carries_a_model_card_with_its_data_and_results(project):
    import yaml

    config, _, _, raw_hashes = project
    for recipe in config.recipes:
        report = json.loads((config.root / "reports" / recipe.name / "eval.json").read_text())
        card = (Path(report["checkpoint"]) / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["base_model"] == recipe.base_model and front["pipeline_tag"] == "text-classification"
        assert front["library_name"] == ("peft" if recipe.method == "lora" else "transformers")
        metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
        assert metrics["accuracy"] == round(report["accuracy"], 6)
        assert all(sha in card for sha in raw_hashes.values())  # every raw file, by content
        assert "## Intended use and limitations" in card and "| baseline: majority |" in card


def test_forgetting_is_measured_on_the_general_text_for_every_recipe(project):
    config, instance, _, _ = project
    rows = json.loads((config.root / "reports" / "leaderboard" / "tickets" / "leaderboard.json").read_text())["rows"]
    for recipe in config.recipes:
        f = json.loads((config.root / "reports" / recipe.name / "eval.json").read_text())["forgetting"]
        assert f["corpus"] == "general" and f["kind"] == "encoder" and f["n_texts"] == 40 and f["knn_k"] == 10
        assert 0.0 <= f["knn_overlap"] <= 1.0
        # head_only leaves the encoder as it was: nothing drifts; full fine-tuning moves it.
        if recipe.method == "head_only":
            assert f["representation_drift"] == pytest.approx(0.0, abs=1e-6) and f["knn_overlap"] == 1.0
        if recipe.method == "full":
            assert f["representation_drift"] > 1e-4
        assert next(r for r in rows if r["recipe"] == recipe.name)["forgetting"] == f["representation_drift"]
        event = instance.get_latest_materialization_event(dg.AssetKey(["reports", recipe.name]))
        assert event.asset_materialization.metadata["forgetting_knn_overlap"].value == f["knn_overlap"]


def test_an_encoder_from_a_checkpoint_measures_forgetting_on_that_checkpoints_test_split(tmp_path, tiny_model_dir):
    """`forgetting: {}` on a checkpoint:<recipe> base: the base dataset's test texts, against that checkpoint."""
    training = {"epochs": 2, "batch_size": 16, "max_length": 16}
    config = load_config(write_project(tmp_path, tiny_model_dir, recipes=[
        {"name": "tiny_full", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "full",
         "training": {**training, "learning_rate": 3e-3}},
        # A head on tiny_full's encoder: the encoder is the base's, so nothing drifts.
        {"name": "tiny_chain", "dataset": "tickets", "base_model": "checkpoint:tiny_full", "method": "head_only",
         "training": training, "forgetting": {}, "gates": {"max_forgetting": 1e-6}},
    ]))
    # Two epochs do not beat the baselines, so there is no champion: only the reports matter here.
    result = materialize_all(build_definitions(config), dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert "reports/tiny_chain" in {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    report = json.loads((config.root / "reports" / "tiny_chain" / "eval.json").read_text())
    f = report["forgetting"]
    assert {k: f[k] for k in ("corpus", "dataset", "split", "kind")} == {
        "corpus": None, "dataset": "tickets", "split": "test", "kind": "encoder"}
    assert f["n_texts"] == report["n_test"]
    # Against the original tiny BERT (the wrong base) it would not be 0: tiny_full moved its encoder.
    assert f["representation_drift"] == pytest.approx(0.0, abs=1e-6) and f["knn_overlap"] == 1.0
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "forgetting_ceiling")
    assert check.passed and "on the base's held-out text (datasets/tickets, test split)" in check.description


def test_the_report_in_the_ui_carries_its_figures(project):
    _, instance, _, _ = project
    event = instance.get_latest_materialization_event(dg.AssetKey(["reports", "tiny_lora"]))
    markdown = event.asset_materialization.metadata["report"].value
    assert "![loss_curves](data:image/png;base64," in markdown
    assert "![confusion_matrix](data:image/png;base64," in markdown


def test_the_leaderboard_compares_every_recipe_in_one_schema(project):
    config, instance, _, _ = project
    out = config.root / "reports" / "leaderboard" / "tickets"
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert sorted(r["recipe"] for r in rows) == ["tiny_full", "tiny_head", "tiny_lora"]
    assert [r["accuracy"] for r in rows] == sorted((r["accuracy"] for r in rows), reverse=True)
    for row in rows:
        report = json.loads((config.root / "reports" / row["recipe"] / "eval.json").read_text())
        checkpoint = Path(report["checkpoint"])
        train_info = json.loads((checkpoint / "train_info.json").read_text())
        # One cost vocabulary: what training wrote is what eval.json, the leaderboard and the UI show.
        cost = TrainingCost.model_validate(report["cost"])
        assert cost == TrainingCost.from_train_info(train_info).model_copy(
            update={"checkpoint_bytes": cost.checkpoint_bytes})
        assert row["accuracy"] == report["accuracy"]
        shown = {"trainable_params", "train_seconds", "examples_per_sec", "tokens_per_sec", "peak_mem_bytes",
                 "checkpoint_bytes"}
        assert {k: row[k] for k in shown} == cost.model_dump(include=shown)
        assert 0 < row["trainable_share"] == cost.trainable_share <= 1
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey(["reports", row["recipe"]])).asset_materialization.metadata
        assert {name: metadata[name].value for name in TrainingCost.model_fields} == cost.model_dump()
    by_name = {r["recipe"]: r for r in rows}
    assert by_name["tiny_lora"]["checkpoint_bytes"] < by_name["tiny_full"]["checkpoint_bytes"]
    assert by_name["tiny_head"]["delta_vs_base"] == 0.0
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 |" in (out / "leaderboard.md").read_text()


def test_manifest_sha256_values_equal_the_files_own(project):
    config, instance, _, raw_hashes = project
    event = instance.get_latest_materialization_event(dg.AssetKey(["checkpoints", "tiny_lora"]))
    manifest = event.asset_materialization.metadata["manifest"].value
    files = {f["uri"]: f["sha256"] for f in manifest["dataset"]["raw_files"]}
    assert files == {p.resolve().as_uri(): sha for p, sha in raw_hashes.items()}
    checkpoint = event.asset_materialization.metadata["checkpoint_path"].value
    assert json.loads((config.root / "checkpoints" / "tiny_lora" / checkpoint.split("/")[-1] / "manifest.json")
                      .read_text()) == manifest
    assert manifest["dagster"]["run_id"] == event.run_id
    assert manifest["recipe_hash"] == config.recipes[1].recipe_hash()
    assert len(manifest["code"]["git"]["sha"]) in (40, len("unknown"))


def test_rematerializing_a_checkpoint_adds_a_version_and_keeps_the_old_one(ticket_project, tmp_path):
    copy = ticket_project.copy(tmp_path / "project")
    config, instance = copy.config, copy.instance
    defs = build_definitions(config)
    before = sorted(p.name for p in (config.root / "checkpoints" / "tiny_head").iterdir())
    result = materialize_all(defs, instance, selection="checkpoints/tiny_head")
    assert result.success
    after = sorted(p.name for p in (config.root / "checkpoints" / "tiny_head").iterdir())
    assert len(after) == len(before) + 1 and set(before) < set(after)
    assert not [p for p in after if "partial" in p]


def test_a_file_missing_a_column_is_rejected_whole_and_the_others_go_on(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[])
    bad = write_csv(tmp_path / "data" / "raw" / "tickets" / "zz_bad.csv", [("hello",)], header=("body",))
    config = load_config(config_path)
    result = materialize_all(build_definitions(config), dg.DagsterInstance.ephemeral(),
                             selection=[dg.AssetKey(["raw", "tickets"]), dg.AssetKey(["datasets", "tickets"])])
    assert result.success
    conn = duckdb.connect(str(config.warehouse_path), read_only=True)
    reason, detail = conn.sql('SELECT reason, detail FROM datasets."tickets__quarantine" WHERE source_uri = ?',
                              params=[bad.as_uri()]).fetchall()[0]
    assert reason == "rejected_file" and f"file {bad.as_uri()} has no column 'text'" in detail
    assert conn.sql('SELECT count(*) FROM datasets."tickets"').fetchall()[0][0] > 0
    accounting = next(e for e in result.get_asset_check_evaluations() if e.check_name == "row_accounting")
    assert accounting.passed


def test_a_corpus_with_no_readable_file_fails_naming_each_file(tmp_path, tiny_model_dir):
    config_path = write_project(tmp_path, tiny_model_dir, recipes=[])
    landing = tmp_path / "data" / "raw" / "tickets"
    for f in landing.iterdir():
        f.unlink()
    bad = write_csv(landing / "bad.csv", [("hello",)], header=("body",))
    result = materialize_all(build_definitions(load_config(config_path)), dg.DagsterInstance.ephemeral(),
                             selection="raw/tickets", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "no file in" in message and bad.as_uri() in message and "'text'" in message


def test_the_quarantine_is_shown_on_the_dataset_and_listed_by_the_cli(project, capsys):
    from ft_assets.cli import main

    config, instance, _, _ = project
    meta = instance.get_latest_materialization_event(dg.AssetKey(["datasets", "tickets"])).asset_materialization.metadata
    report = meta["quarantine_report"].value
    assert "| empty_text | 1 |" in report and "| unknown_label | 1 |" in report and "typo in the label" in report
    assert main(["--config", str(config.source), "quarantine", "tickets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["reason"], r["source_uri"].rsplit("/", 1)[-1], r["position"]) for r in rows} == {
        ("empty_text", "part3.csv", 1), ("unknown_label", "part3.csv", 2)}
    assert main(["--config", str(config.source), "quarantine", "tickets", "--reason", "unknown_label"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 quarantined row(s) in datasets/tickets: unknown_label 1")
    assert "label biling is not one of the dataset labels" in out
