"""The command-line path a user takes: FT_ASSETS_CONFIG + `dagster asset materialize`, then `ft-assets summary`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import learning_recipes

REPO = Path(__file__).resolve().parents[1]


def test_materialize_the_whole_graph_through_the_cli_and_summarize(tmp_path, tiny_model_dir):
    # A recipe that learns, so its gates pass and the whole graph, champion included, materializes.
    recipe = {**learning_recipes(tiny_model_dir, full_gates={})[0], "name": "cli_full"}
    config = write_project(tmp_path, tiny_model_dir, recipes=[recipe], n_per_label=60)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "data" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "FT_ASSETS_CONFIG": str(config), "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    bin_dir = Path(sys.executable).parent

    run = subprocess.run([str(bin_dir / "dagster"), "asset", "materialize", "--select", "*",
                          "-m", "ft_assets.definitions"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Several steps: a process each (defs/executor.py).
    assert "Executing steps using multiprocess executor" in run.stderr
    report = json.loads((tmp_path / "data" / "reports" / "cli_full" / "eval.json").read_text())
    assert report["n_test"] > 0

    summary = subprocess.run([str(bin_dir / "ft-assets"), "summary"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert summary.returncode == 0, summary.stderr
    line = next(x for x in summary.stdout.splitlines() if x.startswith("cli_full"))
    assert f"{report['accuracy']:.4f}" in line and f"{report['cost']['trainable_params']:,}" in line
    assert str(tmp_path / "data" / "reports") in summary.stdout

    audit = subprocess.run([str(bin_dir / "ft-assets"), "audit", "champion:tickets"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    assert audit.stdout.startswith("champion models/tickets/champion: cli_full")
    assert "gate beats_baselines: pass" in audit.stdout

    # One step runs in the run's own process: no second Python process loading the code location.
    one = subprocess.run([str(bin_dir / "dagster"), "asset", "materialize", "--select", "reports/leaderboard/tickets",
                          "-m", "ft_assets.definitions"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "Executing steps in process" in one.stderr and "in subprocess" not in one.stderr


def test_a_bad_config_fails_loading_with_the_file_and_field(tmp_path, tiny_model_dir):
    config = write_project(tmp_path, tiny_model_dir, recipes=[
        {"name": "bad", "dataset": "tickets", "method": "lora", "method_args": {"rank": 4}}])
    env = {**os.environ, "FT_ASSETS_CONFIG": str(config)}
    run = subprocess.run([sys.executable, "-c", "import ft_assets.definitions"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert str(config) in run.stderr and "recipes[0] (bad): field (entry): Value error, method_args.rank" in run.stderr


def test_make_clean_removes_everything_the_demo_generated_and_nothing_it_did_not(tmp_path):
    """On a copy of the Makefile and a data/ folder shaped as `make demo` leaves it."""
    import shutil
    import subprocess

    from ft_assets_tests.conftest import REPO

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    data = tmp_path / "data"
    kept = [data / "raw" / "tickets" / "t.csv", data / "dagster" / "dagster.yaml", data / "make_sample_tickets.py"]
    generated = [data / "warehouse.duckdb", data / "warehouse.duckdb.wal", data / "checkpoints" / "r" / "v" / "m.bin",
                 data / "reports" / "r" / "eval.json", data / "datasets" / "tickets" / "v1" / "train.parquet",
                 data / "models" / "tickets" / "champion" / "champion.json", data / "dagster" / "storage" / "runs.db"]
    for path in kept + generated:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    subprocess.run(["make", "--no-print-directory", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert all(path.exists() for path in kept)
    assert sorted(p.name for p in data.iterdir()) == ["dagster", "make_sample_tickets.py", "raw"]
    assert [p.name for p in (data / "dagster").iterdir()] == ["dagster.yaml"]
