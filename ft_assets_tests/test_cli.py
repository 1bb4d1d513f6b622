"""The command-line path a user takes: FT_ASSETS_CONFIG + `make demo` (`dagster asset materialize`), then
`ft-assets summary` and `ft-assets audit`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import learning_recipes

REPO = Path(__file__).resolve().parents[1]


def test_make_demo_materializes_the_whole_graph_with_its_learning_curve_and_summarizes(tmp_path, tiny_model_dir):
    """`make demo`'s own commands (the graph, then each curve point: a run takes one partition, then the curve)
    on a small project: FT_ASSETS_CONFIG points them at it."""
    # A recipe that learns, so its gates pass and the whole graph, champion included, materializes.
    recipe = {**learning_recipes(tiny_model_dir, full_gates={})[0], "name": "cli_full"}
    config = write_project(tmp_path, tiny_model_dir, recipes=[recipe], n_per_label=60,
                           dataset={"learning_curve": {"fractions": [0.5, 1.0], "recipes": ["cli_full"]}})
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "data" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "FT_ASSETS_CONFIG": str(config), "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    bin_dir = Path(sys.executable).parent

    points = subprocess.run([str(bin_dir / "ft-assets"), "curve-points"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert points.stdout == "learning_curve/tickets 0.5|cli_full\n", points.stderr
    # The Makefile's setup is done (this suite runs in its .venv); its DAGSTER_HOME would be the repo's own.
    run = subprocess.run(["make", "-C", str(REPO), "demo", f"DAGSTER_HOME={home}", f"BIN={bin_dir}"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    # Several steps: a process each (defs/executor.py).
    assert "Executing steps using multiprocess executor" in run.stderr
    report = json.loads((tmp_path / "data" / "reports" / "cli_full" / "eval.json").read_text())
    assert report["n_test"] > 0
    curve = json.loads((tmp_path / "data" / "reports" / "learning_curve" / "tickets" / "learning_curve.json").read_text())
    assert [p["fraction"] for p in curve["points"]] == [0.5, 1.0]
    assert curve["points"][1]["metrics"]["accuracy"] == report["accuracy"]

    # The summary make demo ends with: each recipe's line, where the reports and the curve are.
    line = next(x for x in run.stdout.splitlines() if x.startswith("cli_full"))
    assert f"{report['accuracy']:.4f}" in line and f"{report['cost']['trainable_params']:,}" in line
    assert str(tmp_path / "data" / "reports") in run.stdout
    assert f"learning curve of tickets: {tmp_path / 'data' / 'reports' / 'learning_curve' / 'tickets'}" in run.stdout

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
