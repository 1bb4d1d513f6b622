"""`ft-assets audit`, from a real Dagster instance on disk, across two materializations with a raw file changed
in between: each run is audited with the file contents it saw, in both directions."""

import json

import dagster as dg
import pytest

from ft_assets.cli import main
from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets.lib.storage import sha256_file
from ft_assets_tests.conftest import ticket_rows, write_csv, write_project
from ft_assets_tests.helpers import learning_recipes, materialize_all

RETRAIN_FULL = [dg.AssetKey(k) for k in (["raw", "tickets"], ["datasets", "tickets"], ["checkpoints", "tiny_full"],
                                         ["reports", "tiny_full"], ["models", "tickets", "champion"])]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("audit")
    config_path = write_project(tmp, tiny_model_dir, n_per_label=60, recipes=learning_recipes(tiny_model_dir, {}))
    config = load_config(config_path)
    home = tmp / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    defs = build_definitions(config)
    changed = tmp / "data" / "raw" / "tickets" / "part2.csv"
    first_sha = sha256_file(changed)
    first = materialize_all(defs, instance)
    # New contents for one landing file; only the full recipe is retrained on them.
    write_csv(changed, ticket_rows(45, seed=1))
    second = materialize_all(defs, instance, selection=RETRAIN_FULL)
    assert first.success and second.success
    return {"config": config_path, "home": str(home), "file": changed, "first_sha": first_sha,
            "second_sha": sha256_file(changed), "first": first.run_id, "second": second.run_id}


def audit(capsys, runs, *args) -> tuple[int, str]:
    code = main(["--config", str(runs["config"]), "audit", *args, "--dagster-home", runs["home"]])
    return code, capsys.readouterr().out


def audit_json(capsys, runs, *args) -> dict:
    code, out = audit(capsys, runs, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def file_sha(chain: dict, name: str) -> str:
    return next(f["sha256"] for f in chain["raw_files"] if f["uri"].endswith(name))


def test_each_run_is_audited_with_the_file_contents_it_saw(two_runs, capsys):
    latest = audit_json(capsys, two_runs, "tiny_full")
    older = audit_json(capsys, two_runs, "tiny_full", "--run", two_runs["first"])
    assert older["checkpoint"]["run_id"] == two_runs["first"] and not older["checkpoint"]["current"]
    assert latest["checkpoint"]["run_id"] == two_runs["second"] and latest["checkpoint"]["current"]
    assert file_sha(older, "part2.csv") == two_runs["first_sha"]
    assert file_sha(latest, "part2.csv") == two_runs["second_sha"] != two_runs["first_sha"]
    assert older["dataset"]["version"] != latest["dataset"]["version"]
    assert older["dataset"]["run_id"] == two_runs["first"] and latest["dataset"]["run_id"] == two_runs["second"]
    rows = older["dataset"]["rows"]
    assert rows["train"] + rows["validation"] + rows["test"] == 180
    assert len(older["checkpoint"]["code_version"]) == 12 and older["checkpoint"]["recipe_hash"]
    assert older["checkpoint"]["libraries"]["torch"].startswith("2.")
    gates = {g["name"]: g["passed"] for g in older["evaluation"]["gates"]}
    assert gates == {"beats_baselines": True} and older["evaluation"]["run_id"] == two_runs["first"]
    # The warn-only overfitting check is listed apart from the gates, which decide the champion.
    assert [w["name"] for w in older["evaluation"]["warnings"]] == ["overfitting"]


def test_the_champion_chain_leads_to_the_latest_files(two_runs, capsys):
    code, out = audit(capsys, two_runs, "champion:tickets")
    assert code == 0
    assert out.startswith("champion models/tickets/champion: tiny_full")
    assert f"run {two_runs['second']}" in out and two_runs["second_sha"] in out and two_runs["first_sha"] not in out
    assert "gate beats_baselines: pass" in out and "rows train" in out


def test_a_raw_file_leads_to_every_model_that_saw_it_and_no_other(two_runs, capsys):
    found = audit_json(capsys, two_runs, "--raw-file", two_runs["first_sha"])
    checkpoints = {(c["asset"], c["run_id"]) for c in found["checkpoints"]}
    assert checkpoints == {("checkpoints/tiny_full", two_runs["first"]), ("checkpoints/tiny_head", two_runs["first"])}
    assert [d["run_id"] for d in found["datasets"]] == [two_runs["first"]]
    assert [(c["recipe"], c["current"]) for c in found["champions"]] == [("tiny_full", False)]
    assert "stale" not in found
    by_path = audit_json(capsys, two_runs, "--raw-file", str(two_runs["file"]))
    assert by_path["sha256"] == two_runs["second_sha"]
    assert {(c["asset"], c["run_id"]) for c in by_path["checkpoints"]} == {("checkpoints/tiny_full", two_runs["second"])}


def test_stale_lists_only_current_assets_built_from_the_file(two_runs, capsys):
    first = audit_json(capsys, two_runs, "--raw-file", two_runs["first_sha"], "--stale")
    # Only the head recipe still stands on the old contents; everything else was rebuilt in run two.
    assert {s["asset"] for s in first["stale"]} == {"checkpoints/tiny_head", "reports/tiny_head",
                                                    "reports/leaderboard/tickets"}
    second = audit_json(capsys, two_runs, "--raw-file", two_runs["second_sha"], "--stale")
    assert {s["asset"] for s in second["stale"]} == {"raw/tickets", "datasets/tickets", "checkpoints/tiny_full",
                                                     "reports/tiny_full", "models/tickets/champion"}
    code, out = audit(capsys, two_runs, "--raw-file", two_runs["second_sha"], "--stale")
    assert code == 0 and "must be rebuilt without it: 5" in out and "dagster asset materialize --select" in out


def test_asking_about_what_never_ran_is_a_clear_error(two_runs, capsys):
    code = main(["--config", str(two_runs["config"]), "audit", "no_such_recipe", "--dagster-home", two_runs["home"]])
    assert code == 2 and "checkpoints/no_such_recipe has no materialization" in capsys.readouterr().err
    code = main(["--config", str(two_runs["config"]), "audit", "tiny_full", "--run", "not-a-run",
                 "--dagster-home", two_runs["home"]])
    assert code == 2 and "in run not-a-run" in capsys.readouterr().err
