"""A raw or dataset step killed with SIGKILL (its whole process group) at any point of its work never
makes a checkpoint record a dataset version that does not describe its rows, and the next run of the
killed step adopts or rolls forward what the kill left, saying which.

Six lanes share one project, each a corpus, a dataset and a recipe of its own. In each, the dataset
step is killed at one point of its work, then the raw step at one point of its; every checkpoint is
then trained (the six together), and audited; then raw and datasets are materialized again.

The steps run in processes forked from a server process that has loaded Dagster and the project
once (a fork takes a second, a fresh `dagster asset materialize` several). A forked step gets its
own process group, arms one kill point by wrapping a function of the real code (a DuckDB statement,
the snapshot's parquet writer, Dagster's event store), and dies by os.killpg(..., SIGKILL) there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from ft_assets.cli import main as ft_assets_cli
from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets.lib.datasets.cleaning import content_version
from ft_assets.lib.datasets.snapshot import SPLITS
from ft_assets.lib.ingest.readers import committed_files
from ft_assets_tests.conftest import LABELS, REPO, ticket_rows, write_csv
from ft_assets_tests.helpers import materialize_all

# (dataset kill point, raw kill point) per lane. Lane 2 also gains a file after its kills, so its raw
# table is rolled forward where lane 3's is adopted; lane 4's dataset is adopted (its raw is untouched).
LANES = [
    ("before_transaction", "before_transaction"),
    ("inside_transaction", "inside_transaction"),
    ("after_commit", "after_commit"),
    ("inside_snapshot", "before_event"),
    ("before_event", None),
    ("after_event", "after_event"),
]
# Kill points after which the warehouse holds a commit Dagster never recorded.
AHEAD = {"after_commit", "inside_snapshot", "before_event"}
ROLLED_FORWARD_RAW = 2


def lane_name(i: int) -> str:
    return f"lane{i}"


# --- the step server: forks a step per request, with one kill point armed ----------------------------

def die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


class DiesAt:
    """The warehouse connection, except that the process dies at one point of a step's transaction."""

    def __init__(self, conn, point: str):
        self._conn, self._point = conn, point

    def execute(self, sql, *args):
        statement = sql.strip().upper()
        if (statement, self._point) in {("BEGIN TRANSACTION", "before_transaction"), ("COMMIT", "inside_transaction")}:
            die()
        result = self._conn.execute(sql, *args)
        if (statement, self._point) == ("COMMIT", "after_commit"):
            die()
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def arm(point: str, key: dg.AssetKey) -> None:
    """Makes this process die at `point` of the step that materializes `key`."""
    if point in ("before_transaction", "inside_transaction", "after_commit"):
        from ft_assets.defs.resources import WarehouseResource

        connect = WarehouseResource.get_connection

        @contextlib.contextmanager
        def get_connection(self):
            with connect(self) as conn:
                yield DiesAt(conn, point)

        WarehouseResource.get_connection = get_connection
    elif point == "inside_snapshot":  # train.parquet and validation.parquet written, test.parquet not
        import pyarrow.parquet as pq

        write, written = pq.write_table, []

        def write_table(*args, **kwargs):
            write(*args, **kwargs)
            written.append(args[1])
            if len(written) == 2:
                die()

        pq.write_table = write_table
    else:  # before_event, after_event: around Dagster's storing of the materialization
        from dagster._core.instance import DagsterInstance

        handle = DagsterInstance.handle_new_event

        def handle_new_event(self, event, **kwargs):
            ours = (event.dagster_event is not None and event.dagster_event.is_step_materialization
                    and event.dagster_event.asset_key == key)
            if ours and point == "before_event":
                die()
            handle(self, event, **kwargs)
            if ours and point == "after_event":
                die()

        DagsterInstance.handle_new_event = handle_new_event


def serve() -> None:
    """Reads requests as JSON lines: {"kill": point, "asset": key}, one step killed at that point, or
    {"together": [key, ...]}, those assets materialized at once, a run each; answers each with the
    children's wait statuses."""
    home, config_path = sys.argv[1], sys.argv[2]
    defs = build_definitions(load_config(config_path))
    for line in sys.stdin:
        request = json.loads(line)
        assets = [request["asset"]] if "kill" in request else request["together"]
        children = []
        for asset in assets:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.setsid()
                    key = dg.AssetKey.from_user_string(asset)
                    if "kill" in request:
                        arm(request["kill"], key)
                    with dg.DagsterInstance.from_config(home) as instance:
                        code = 0 if materialize_all(defs, instance, selection=[key], raise_on_error=False).success else 1
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            children.append(pid)
        statuses = [os.waitpid(pid, 0)[1] for pid in children]
        print(json.dumps([{"signal": os.WTERMSIG(s) if os.WIFSIGNALED(s) else None,
                           "exit": os.WEXITSTATUS(s) if os.WIFEXITED(s) else None} for s in statuses]), flush=True)


# --- the lanes ------------------------------------------------------------------------------------------

def write_lanes_project(tmp: Path, model_dir: Path) -> Path:
    for i in range(len(LANES)):
        write_csv(tmp / "data" / "raw" / lane_name(i) / "a.csv", ticket_rows(8, seed=i))
    training = {"epochs": 1, "batch_size": 16, "max_length": 16}
    config = {
        "storage": {"root": "data"},
        "corpora": [{"name": lane_name(i), "path": f"raw/{lane_name(i)}/", "format": "csv", "label_field": "label"}
                    for i in range(len(LANES))],
        "datasets": [{"name": lane_name(i), "corpus": lane_name(i), "labels": LABELS, "test_fraction": 0.2}
                     for i in range(len(LANES))],
        "recipes": [{"name": lane_name(i), "dataset": lane_name(i), "base_model": str(model_dir), "method": "head_only",
                     "training": training, "retrain": "manual"} for i in range(len(LANES))],
        "automation": {"enabled": False},
    }
    path = tmp / "project.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def key(kind: str, i: int) -> dg.AssetKey:
    return dg.AssetKey([kind, lane_name(i)])


def latest(instance: dg.DagsterInstance, asset: dg.AssetKey):
    return instance.get_latest_materialization_event(asset)


@pytest.fixture(scope="module")
def lanes(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("kill_points")
    config_path = write_lanes_project(tmp, tiny_model_dir)
    config = load_config(config_path)
    defs = build_definitions(config)
    home = tmp / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    landing = tmp / "data" / "raw"
    n = len(LANES)

    # Recorded before the kills: raw and dataset of every lane, then a second file ingested.
    assert materialize_all(defs, instance, selection=[key(k, i) for i in range(n) for k in ("raw", "datasets")]).success
    for i in range(n):
        write_csv(landing / lane_name(i) / "b.csv", ticket_rows(4, seed=10 + i))
    assert materialize_all(defs, instance, selection=[key("raw", i) for i in range(n)]).success

    server = subprocess.Popen([sys.executable, "-c", "from ft_assets_tests.test_kill_points import serve; serve()",
                               str(home), str(config_path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "DAGSTER_HOME": str(home)})

    def ask(request: dict) -> list[dict]:
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        if not answer:
            pytest.fail(f"the step server exited ({server.wait()}) on {request}; its traceback is in stderr")
        return json.loads(answer)

    state = {"config": config, "config_path": config_path, "home": str(home), "instance": instance}
    try:
        for i, (dataset_point, raw_point) in enumerate(LANES):
            assert ask({"kill": dataset_point, "asset": f"datasets/{lane_name(i)}"}) == [{"signal": 9, "exit": None}]
            if raw_point is not None:
                write_csv(landing / lane_name(i) / "c.csv", ticket_rows(3, seed=20 + i))
                assert ask({"kill": raw_point, "asset": f"raw/{lane_name(i)}"}) == [{"signal": 9, "exit": None}]
        with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
            state["warehouse_versions"] = [content_version(conn, f'datasets."{lane_name(i)}"') for i in range(n)]
        # What Dagster recorded last, which the checkpoints must train on.
        state["recorded"] = [latest(instance, key("datasets", i)) for i in range(n)]
        state["partials"] = [bool(list((config.root / "datasets" / lane_name(i)).glob(".*.partial-*")))
                             for i in range(n)]
        trained = ask({"together": [f"checkpoints/{lane_name(i)}" for i in range(n)]})
        assert trained == [{"signal": None, "exit": 0}] * n
    finally:
        server.stdin.close()
        server.wait(timeout=60)

    write_csv(landing / lane_name(ROLLED_FORWARD_RAW) / "d.csv", ticket_rows(2, seed=30))
    again = materialize_all(defs, instance, selection=[key(k, i) for i in range(n) for k in ("raw", "datasets")])
    assert again.success
    state["again"] = again.run_id
    state["logs"] = [e.user_message for e in instance.all_logs(again.run_id) if e.dagster_event is None]
    return state


def snapshot_rows(folder: Path) -> tuple[str, dict[str, int]]:
    """The version the folder's rows hash to, and its rows per split, read from the parquet files alone."""
    with duckdb.connect() as conn:
        conn.read_parquet([str(folder / f"{split}.parquet") for split in SPLITS]).create_view("rows")
        counts = dict(conn.sql("SELECT split, count(*) FROM rows GROUP BY split").fetchall())
        return content_version(conn, "rows"), {split: counts.get(split, 0) for split in SPLITS}


def verdict(line: str) -> str:
    """A log line of the next run, as `<asset>: adopted`, `... rolled forward` or `... removed a half-written snapshot`."""
    asset = line.split(":")[0]
    if "half-written" in line:
        return f"{asset}: removed a half-written snapshot"
    return f"{asset}: " + ("adopted" if "; adopted:" in line else "rolled forward" if "; rolled forward:" in line
                           else line)


LANE_IDS = [f"dataset_{d}-raw_{r}" for d, r in LANES]


@pytest.mark.parametrize("i", range(len(LANES)), ids=LANE_IDS)
def test_the_checkpoint_records_the_version_of_the_rows_it_trained_on(lanes, i, capsys):
    dataset_point, _ = LANES[i]
    instance = lanes["instance"]
    manifest = latest(instance, key("checkpoints", i)).asset_materialization.metadata["manifest"].value
    record = lanes["recorded"][i]
    recorded = record.asset_materialization.metadata["dataset_version"].value
    # The state the kill left: Dagster's record, and a warehouse that is ahead of it or not.
    assert (lanes["warehouse_versions"][i] != recorded) == (dataset_point in AHEAD)
    assert manifest["dataset"]["version"] == recorded

    # The rows it read: the snapshot its manifest names hashes to that version, and holds the train rows
    # the training process counted.
    version, rows = snapshot_rows(Path(manifest["dataset"]["snapshot"]["path"]))
    assert version == manifest["dataset"]["version"]
    assert manifest["train_info"]["train_examples"] == rows["train"] == manifest["dataset"]["rows"]["train"]
    assert manifest["dataset"]["rows"] == rows
    assert {s: sum(f["rows"][s] for f in manifest["dataset"]["raw_files"]) for s in SPLITS} == rows

    # ft-assets audit tells the same story.
    assert ft_assets_cli(["--config", str(lanes["config_path"]), "audit", lane_name(i), "--json",
                          "--dagster-home", lanes["home"]]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["dataset"]["version"] == version
    assert chain["dataset"]["run_id"] == record.run_id
    assert chain["dataset"]["rows"] == rows
    assert chain["raw_files"] == manifest["dataset"]["raw_files"]


@pytest.mark.parametrize("i", range(len(LANES)), ids=LANE_IDS)
def test_the_next_run_adopts_or_rolls_forward_what_the_kill_left(lanes, i):
    dataset_point, raw_point = LANES[i]
    instance, name = lanes["instance"], lane_name(i)
    said = [line for line in lanes["logs"] if line.startswith((f"raw/{name}:", f"datasets/{name}:"))]
    expected = []
    if raw_point in AHEAD:
        expected.append(f"raw/{name}: " + ("rolled forward" if i == ROLLED_FORWARD_RAW else "adopted"))
    if dataset_point == "inside_snapshot":
        expected.append(f"datasets/{name}: removed a half-written snapshot")
    if dataset_point in AHEAD:
        expected.append(f"datasets/{name}: " + ("adopted" if raw_point is None else "rolled forward"))
    assert [verdict(line) for line in said] == expected, said
    # The kill left a half-written snapshot only inside the snapshot; the next run removed it.
    assert lanes["partials"][i] == (dataset_point == "inside_snapshot")
    assert not list((lanes["config"].root / "datasets" / name).glob(".*.partial-*"))

    # What Dagster now records is what the warehouse holds.
    dataset_event = latest(instance, key("datasets", i))
    raw_event = latest(instance, key("raw", i))
    assert dataset_event.run_id == raw_event.run_id == lanes["again"]
    with duckdb.connect(str(lanes["config"].warehouse_path), read_only=True) as conn:
        assert content_version(conn, f'datasets."{name}"') == dataset_event.asset_materialization.metadata[
            "dataset_version"].value
        files = committed_files(conn, name)
        logged = conn.sql(f'SELECT source_uri, event, run_id FROM raw."{name}__file_log" ORDER BY logged_at').fetchall()
    recorded_files = raw_event.asset_materialization.metadata["raw_files"].value
    assert {f["source_uri"]: f["file_sha256"] for f in recorded_files} == {u: f["sha256"] for u, f in files.items()}
    # Every file-log row is of a run Dagster recorded; the changes are counted from the last record.
    recorded_runs = {r.run_id for r in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key("raw", i)),
                                                                       limit=100).records}
    assert {run for _, _, run in logged} <= recorded_runs
    arrived = [c["uri"].rsplit("/", 1)[-1] for c in raw_event.asset_materialization.metadata["file_changes"].value["arrived"]]
    expected_arrivals = {"after_event": [], None: []}.get(raw_point, ["c.csv"])
    if i == ROLLED_FORWARD_RAW:
        expected_arrivals = ["c.csv", "d.csv"]
    assert sorted(arrived) == expected_arrivals
