"""Gate checks on reports and the gated champion: the rule alone, then the real Definitions over a tiny BERT."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ft_assets.cli import main
from ft_assets.defs import build_definitions
from ft_assets.lib.models.champion import CHAMPION_FILE, HISTORY_FILE, choose_champion
from ft_assets.lib.config import ChampionConfig, load_config
from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import learning_recipes, materialize_all


def candidate(recipe: str, accuracy: float, *, forgetting=None, params=1000, passed=True) -> dict:
    gate = {"name": "beats_baselines", "passed": passed, "summary": f"accuracy {accuracy} ..."}
    return {"recipe": recipe, "method": "lora", "metrics": {"accuracy": accuracy, "macro_f1": accuracy},
            "forgetting": forgetting, "trainable_params": params, "train_seconds": 1.0, "gates": [gate]}


def test_the_best_passing_recipe_wins_and_a_failed_gate_is_never_promoted():
    decision = choose_champion([candidate("best_but_failed", 0.99, passed=False), candidate("good", 0.90),
                                candidate("worse", 0.80)], ChampionConfig(), "classification")
    assert decision["winner"]["recipe"] == "good"
    why = {r["recipe"]: r["why"] for r in decision["ranking"]}
    assert why["best_but_failed"].startswith("failed beats_baselines")
    assert why["worse"] == "accuracy 0.8000, 0.1000 behind good"


def test_ties_within_the_tolerance_go_to_the_least_forgetting_then_the_fewest_parameters():
    candidates = [candidate("full", 0.91, forgetting=0.30, params=10**6), candidate("lora", 0.905, forgetting=0.05),
                  candidate("unmeasured", 0.91, forgetting=None)]
    assert choose_champion(candidates, ChampionConfig(), "classification")["winner"]["recipe"] == "full"
    decision = choose_champion(candidates, ChampionConfig(tolerance=0.01), "classification")
    assert decision["winner"]["recipe"] == "lora"
    assert "tied within 0.01" in decision["why"]
    by_params = choose_champion(candidates, ChampionConfig(tolerance=0.01, tie_break=["trainable_params"]),
                                "classification")
    assert by_params["winner"]["recipe"] in ("lora", "unmeasured")  # both 1000 params, ahead of full's million


def test_perplexity_ranks_lower_first_and_nobody_passing_is_said_plainly():
    lm = [{**candidate("a", 0), "metrics": {"perplexity": 12.0}}, {**candidate("b", 0), "metrics": {"perplexity": 9.0}}]
    assert choose_champion(lm, ChampionConfig(), "language_modeling")["winner"]["recipe"] == "b"
    decision = choose_champion([candidate("a", 0.5, passed=False)], ChampionConfig(), "classification")
    assert decision["winner"] is None and decision["why"] == "no recipe passed its gates (1 candidate(s))"


@pytest.fixture(scope="module")
def promoted(ticket_project, tmp_path_factory):
    """A copy of the shared ticket project (conftest.ticket_project), whose gates these tests change: (its
    YAML, its instance, the shared run)."""
    copy = ticket_project.copy(tmp_path_factory.mktemp("champion") / "project")
    return copy.folder / "project.yaml", copy.instance, copy.result


REEVALUATE = [dg.AssetKey(["reports", "tiny_full"]), dg.AssetKey(["models", "tickets", "champion"])]


def with_full_gates(config_path, gates: dict):
    """The project with tiny_full's gates replaced; the same storage root, so the same assets."""
    raw = yaml.safe_load(config_path.read_text())
    raw["recipes"][0]["gates"] = gates
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(config_path)


def test_failed_gates_are_checks_with_their_numbers(promoted):
    _, _, result = promoted
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert checks[("reports/tiny_full", "beats_baselines")].passed
    assert checks[("reports/tiny_full", "forgetting_ceiling")].passed
    head = checks[("reports/tiny_head", "beats_baselines")]
    assert not head.passed and head.severity == dg.AssetCheckSeverity.WARN
    assert "does not beat the best baseline (majority" in head.description
    assert {"accuracy", "best_baseline_accuracy", "improvement", "why"} <= set(head.metadata)
    # An accuracy a whole point above the best baseline cannot be had: the margin alone keeps tiny_lora out.
    lora = checks[("reports/tiny_lora", "beats_baselines")]
    assert not lora.passed and "by the required margin 1: improvement" in lora.description


def test_the_champion_is_the_passing_recipe_published_whole(promoted):
    config_path, instance, _ = promoted
    config = load_config(config_path)
    event = instance.get_latest_materialization_event(dg.AssetKey(["models", "tickets", "champion"]))
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert meta["recipe"] == "tiny_full" and meta["decision"] == "promoted"
    champion_dir = config.root / "models" / "tickets" / "champion"
    record = json.loads((champion_dir / CHAMPION_FILE).read_text())
    assert record["checkpoint"] == meta["checkpoint_path"] and record["recipe"] == "tiny_full"
    assert {r["recipe"]: r["eligible"] for r in record["ranking"]} == {"tiny_full": True, "tiny_lora": False,
                                                                         "tiny_head": False}
    for name in ("model.safetensors", "manifest.json", "tokenizer.json", "labels.json"):
        assert (champion_dir / name).read_bytes() == (Path(meta["checkpoint_path"]) / name).read_bytes()
    assert "## Champion of `tickets`" in (champion_dir / "README.md").read_text()
    assert main(["verify", str(champion_dir)]) == 0  # the published copy still matches the manifest
    assert len((champion_dir.parent / HISTORY_FILE).read_text().splitlines()) == 1


def test_no_passing_recipe_keeps_the_previous_champion_and_says_why(promoted):
    config_path, instance, _ = promoted
    config = with_full_gates(config_path, {"max_forgetting": 0.01})
    champion_dir = config.root / "models" / "tickets" / "champion"
    before = (champion_dir / CHAMPION_FILE).read_text()
    result = materialize_all(build_definitions(config), instance, selection=REEVALUATE)
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("models__tickets__champion")[0]
            .metadata.items()}
    assert meta["decision"] == "kept_previous" and meta["recipe"] == "tiny_full"
    assert "no recipe passed its gates" in meta["why"] and "stays" in meta["why"]
    assert "forgetting_ceiling: representation drift" in meta["ranking"]
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "promoted_a_gated_recipe")
    assert not check.passed
    assert (champion_dir / CHAMPION_FILE).read_text() == before


def test_a_blocking_gate_stops_everything_downstream_in_the_run(promoted):
    config_path, instance, _ = promoted
    config = with_full_gates(config_path, {"max_forgetting": 0.01, "blocking": True})
    result = materialize_all(build_definitions(config), instance, raise_on_error=False,
                             selection=REEVALUATE)
    assert not result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert materialized == {"reports/tiny_full"}  # recorded, with its failed check, but nothing after it
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "forgetting_ceiling")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR


def test_a_checkpoint_deleted_from_disk_cannot_be_promoted(promoted):
    config_path, instance, _ = promoted
    config = with_full_gates(config_path, {})
    event = instance.get_latest_materialization_event(dg.AssetKey(["reports", "tiny_full"]))
    checkpoint = Path(event.asset_materialization.metadata["checkpoint_path"].value)
    aside = checkpoint.with_name("moved_aside")
    checkpoint.rename(aside)
    try:
        result = materialize_all(build_definitions(config), instance, selection=REEVALUATE[1:])
    finally:
        aside.rename(checkpoint)
    meta = result.asset_materializations_for_node("models__tickets__champion")[0].metadata
    assert meta["decision"].value == "kept_previous"
    assert f"the evaluated checkpoint {checkpoint} is no longer on disk" in meta["ranking"].value


def test_without_any_champion_yet_the_asset_fails_naming_each_recipe(tmp_path, tiny_model_dir):
    recipes = learning_recipes(tiny_model_dir)[1:]  # only the head, which cannot beat the majority class
    config = load_config(write_project(tmp_path, tiny_model_dir, recipes=recipes, n_per_label=60))
    result = materialize_all(build_definitions(config), dg.DagsterInstance.ephemeral(), raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                   and e.step_key == "models__tickets__champion")
    message = str(failure.event_specific_data.error)
    assert "no recipe passed its gates" in message and "tiny_head" in message
    assert not (config.root / "models" / "tickets" / "champion").exists()
