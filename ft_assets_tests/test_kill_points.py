"""A raw or dataset step killed with SIGKILL (its whole process group) at any point of its work never
makes a checkpoint record a dataset version that does not describe its rows, and the next run of the
killed step adopts or rolls forward what the kill left, saying which.

Four lanes share one project, each with a corpus and a dataset of its own. In each, the dataset step
is killed at one point or several in turn, each time over newly ingested data, then the raw step
likewise. One lane is killed at every point before Dagster records the materialization, one after;
each trains a checkpoint (two trainings, side by side), which is audited. Two more lanes end with
content that the next run adopts, or rolls forward. Then every lane's raw and dataset assets are
materialized again.

Every run happens in a server process that loads Dagster and the project once: the runs that are not
killed in it, each killed step in a process forked from it (warm, it takes a second where a fresh
`dagster asset materialize` takes several). A forked step gets its own process group, arms one kill
point by wrapping a function of the real code (the warehouse connection's statements, among them
the snapshot's COPY to parquet, or Dagster's event store), and dies by os.killpg(..., SIGKILL) there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
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
from ft_assets.lib.warehouse import last_commit
from ft_assets_tests.conftest import LABELS, REPO, ticket_rows, write_csv
from ft_assets_tests.helpers import materialize_all

# Kill points after which the warehouse holds a commit that Dagster never recorded.
AHEAD = {"after_commit", "inside_snapshot", "before_event"}


@dataclass(frozen=True)
class Lane:
    name: str
    dataset_kills: tuple[str, ...]  # in turn, each over a newly ingested file
    raw_kills: tuple[str, ...]  # in turn, each over a new landing file (c1.csv, c2.csv, ...)
    trains: bool  # a checkpoint is trained on it after the kills
    rerun_says: tuple[str, ...]  # what the next raw and dataset run logs about what the kills left
    file_before_rerun: bool = False  # one more landing file, so that the raw run rolls forward


LANES = [
    # Every kill point before Dagster's record, in turn: the checkpoint trains on the version recorded before.
    Lane("before_record", ("before_transaction", "inside_transaction", "after_commit", "before_event", "inside_snapshot"),
         ("before_transaction", "inside_transaction", "after_commit", "before_event"), trains=True,
         rerun_says=("raw: adopted", "datasets: removed a half-written snapshot", "datasets: rolled forward")),
    Lane("after_record", ("after_event",), ("after_event",), trains=True, rerun_says=()),
    Lane("adopted", ("before_event",), (), trains=False, rerun_says=("datasets: adopted",)),
    Lane("rolled_forward", (), ("after_commit",), trains=False, rerun_says=("raw: rolled forward",),
         file_before_rerun=True),
]
TRAINED = [lane for lane in LANES if lane.trains]


# --- the step server: forks a step per request, with one kill point armed ----------------------------

def die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


class DiesAt:
    """The warehouse connection, except that the process dies at one point of a step's work: around
    its transaction, or inside the snapshot (DuckDB has written train.parquet and validation.parquet,
    not test.parquet)."""

    def __init__(self, conn, point: str):
        self._conn, self._point, self._copies = conn, point, 0

    def execute(self, sql, *args):
        statement = sql.strip().upper()
        if (statement, self._point) in {("BEGIN TRANSACTION", "before_transaction"), ("COMMIT", "inside_transaction")}:
            die()
        result = self._conn.execute(sql, *args)
        if (statement, self._point) == ("COMMIT", "after_commit"):
            die()
        if self._point == "inside_snapshot" and statement.startswith("COPY") and ".PARQUET'" in statement:
            self._copies += 1
            if self._copies == 2:
                die()
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def arm(point: str, key: dg.AssetKey) -> None:
    """Makes this process die at `point` of the step that materializes `key`."""
    if point in ("before_transaction", "inside_transaction", "after_commit", "inside_snapshot"):
        from ft_assets.defs.resources import WarehouseResource

        connect = WarehouseResource.get_connection

        @contextlib.contextmanager
        def get_connection(self):
            with connect(self) as conn:
                yield DiesAt(conn, point)

        WarehouseResource.get_connection = get_connection
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
    """Reads requests as JSON lines and answers each with one JSON line:
    {"materialize": [key, ...]}: those assets in one run, in this process -> {"success", "run_id"};
    {"kill": point, "asset": key}: a forked step killed at that point -> [its wait status];
    {"together": [key, ...]}: each asset in a forked run of its own, all at once -> [their wait statuses].
    The runs in this process come first and leave it warm (imports, caches) for the forks."""
    home, config_path = sys.argv[1], sys.argv[2]
    defs = build_definitions(load_config(config_path))
    for line in sys.stdin:
        request = json.loads(line)
        if "materialize" in request:
            with dg.DagsterInstance.from_config(home) as instance:
                result = materialize_all(defs, instance, selection=[dg.AssetKey.from_user_string(a)
                                                                    for a in request["materialize"]])
            print(json.dumps({"success": result.success, "run_id": result.run_id}), flush=True)
            continue
        children = []
        for asset in [request["asset"]] if "kill" in request else request["together"]:
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
    for i, lane in enumerate(LANES):
        write_csv(tmp / "data" / "raw" / lane.name / "a.csv", ticket_rows(8, seed=i))
    config = {
        "storage": {"root": "data"},
        "corpora": [{"name": lane.name, "path": f"raw/{lane.name}/", "format": "csv", "label_field": "label"}
                    for lane in LANES],
        "datasets": [{"name": lane.name, "corpus": lane.name, "labels": LABELS, "test_fraction": 0.2} for lane in LANES],
        "recipes": [{"name": lane.name, "dataset": lane.name, "base_model": str(model_dir), "method": "head_only",
                     "training": {"epochs": 1, "batch_size": 16, "max_length": 16}, "retrain": "manual"}
                    for lane in TRAINED],
        "automation": {"enabled": False},
    }
    path = tmp / "project.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def key(kind: str, lane: Lane) -> dg.AssetKey:
    return dg.AssetKey([kind, lane.name])


def latest(instance: dg.DagsterInstance, asset: dg.AssetKey):
    return instance.get_latest_materialization_event(asset)


@pytest.fixture(scope="module")
def lanes(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("kill_points")
    config_path = write_lanes_project(tmp, tiny_model_dir)
    config = load_config(config_path)
    home = tmp / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    landing = config.root / "raw"
    server = subprocess.Popen([sys.executable, "-c", "from ft_assets_tests.test_kill_points import serve; serve()",
                               str(home), str(config_path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "DAGSTER_HOME": str(home)})

    def ask(request: dict):
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        if not answer:
            pytest.fail(f"the step server exited ({server.wait()}) on {request}; its traceback is in stderr")
        return json.loads(answer)

    def materialize(*kinds: str, lanes: list[Lane] = LANES) -> str:
        ran = ask({"materialize": [f"{kind}/{lane.name}" for lane in lanes for kind in kinds]})
        assert ran["success"]
        return ran["run_id"]

    state = {"config": config, "config_path": config_path, "home": str(home), "instance": instance,
             "recorded": {}, "warehouse_versions": {}, "partials": {}, "kills": []}

    def kill(point: str, asset: str) -> None:
        """Kills the step at `point`, noting which run had committed its table before and after."""
        table = asset.replace("/", ".")
        before = committed_by(config.warehouse_path, table)
        assert ask({"kill": point, "asset": asset}) == [{"signal": signal.SIGKILL, "exit": None}], (asset, point)
        state["kills"].append((asset, point, before, committed_by(config.warehouse_path, table)))
    try:
        materialize("raw", "datasets")  # what Dagster records before the kills
        for i, lane in enumerate(LANES):
            for j, point in enumerate(lane.dataset_kills, start=1):
                write_csv(landing / lane.name / f"b{j}.csv", ticket_rows(3, seed=10 * i + j))
                materialize("raw", lanes=[lane])
                kill(point, f"datasets/{lane.name}")
            for j, point in enumerate(lane.raw_kills, start=1):
                write_csv(landing / lane.name / f"c{j}.csv", ticket_rows(2, seed=100 + 10 * i + j))
                kill(point, f"raw/{lane.name}")
            # What Dagster recorded last, which a checkpoint must train on, and what the warehouse holds.
            state["recorded"][lane.name] = latest(instance, key("datasets", lane))
            with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
                state["warehouse_versions"][lane.name] = content_version(conn, f'datasets."{lane.name}"')
            state["partials"][lane.name] = bool(list((config.root / "datasets" / lane.name).glob(".*.partial-*")))
        trained = ask({"together": [f"checkpoints/{lane.name}" for lane in TRAINED]})
        assert trained == [{"signal": None, "exit": 0}] * len(TRAINED)

        for i, lane in enumerate(LANES):
            if lane.file_before_rerun:
                write_csv(landing / lane.name / f"c{len(lane.raw_kills) + 1}.csv", ticket_rows(2, seed=200 + i))
        state["again"] = materialize("raw", "datasets")
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    state["logs"] = [e.user_message for e in instance.all_logs(state["again"]) if e.dagster_event is None]
    return state


def committed_by(warehouse: Path, table: str) -> str | None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        return last_commit(conn, table).run_id


def snapshot_rows(folder: Path) -> tuple[str, dict[str, int]]:
    """The version the folder's rows hash to, and its rows per split, read from the parquet files alone."""
    with duckdb.connect() as conn:
        conn.read_parquet([str(folder / f"{split}.parquet") for split in SPLITS]).create_view("rows")
        counts = dict(conn.sql("SELECT split, count(*) FROM rows GROUP BY split").fetchall())
        return content_version(conn, "rows"), {split: counts.get(split, 0) for split in SPLITS}


def lane_id(lane: Lane) -> str:
    return f"{lane.name}: dataset {'+'.join(lane.dataset_kills) or '-'}, raw {'+'.join(lane.raw_kills) or '-'}"


@pytest.mark.parametrize("lane", TRAINED, ids=lane_id)
def test_the_checkpoint_records_the_version_of_the_rows_it_trained_on(lanes, lane, capsys):
    instance = lanes["instance"]
    manifest = latest(instance, key("checkpoints", lane)).asset_materialization.metadata["manifest"].value
    record = lanes["recorded"][lane.name]
    recorded = record.asset_materialization.metadata["dataset_version"].value
    # The state the kills left: Dagster's record, and a warehouse that is ahead of it or not.
    assert (lanes["warehouse_versions"][lane.name] != recorded) == any(k in AHEAD for k in lane.dataset_kills)
    assert manifest["dataset"]["version"] == recorded

    # The rows it read: the snapshot its manifest names hashes to that version, and holds the train rows
    # the training process counted.
    version, rows = snapshot_rows(Path(manifest["dataset"]["snapshot"]["path"]))
    assert version == manifest["dataset"]["version"]
    assert manifest["train_info"]["train_examples"] == rows["train"]
    assert manifest["dataset"]["rows"] == rows
    assert {s: sum(f["rows"][s] for f in manifest["dataset"]["raw_files"]) for s in SPLITS} == rows

    # ft-assets audit tells the same story.
    assert ft_assets_cli(["--config", str(lanes["config_path"]), "audit", lane.name, "--json",
                          "--dagster-home", lanes["home"]]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["dataset"]["version"] == version
    assert chain["dataset"]["run_id"] == record.run_id
    assert chain["dataset"]["rows"] == rows
    assert chain["raw_files"] == manifest["dataset"]["raw_files"]


def test_a_step_killed_before_its_commit_leaves_the_warehouse_as_it_was_and_one_killed_after_does_not(lanes):
    for asset, point, before, after in lanes["kills"]:
        assert (after == before) == (point in ("before_transaction", "inside_transaction")), (asset, point)


def verdict(line: str) -> str:
    """A log line of the next run as `raw: adopted`, `datasets: rolled forward`, `datasets: removed a
    half-written snapshot`, or the line itself."""
    kind = line.split("/", 1)[0]
    if "half-written" in line:
        return f"{kind}: removed a half-written snapshot"
    for said in ("adopted", "rolled forward"):
        if f"; {said}:" in line:
            return f"{kind}: {said}"
    return line


@pytest.mark.parametrize("lane", LANES, ids=lane_id)
def test_the_next_run_adopts_or_rolls_forward_what_the_kills_left(lanes, lane):
    instance, config = lanes["instance"], lanes["config"]
    said = [verdict(line) for line in lanes["logs"] if line.startswith((f"raw/{lane.name}:", f"datasets/{lane.name}:"))]
    assert said == list(lane.rerun_says), said
    # A kill inside the snapshot left a half-written folder; the next run removed it.
    assert lanes["partials"][lane.name] == ("inside_snapshot" in lane.dataset_kills)
    assert not list((config.root / "datasets" / lane.name).glob(".*.partial-*"))

    # What Dagster now records is what the warehouse holds.
    dataset_event, raw_event = latest(instance, key("datasets", lane)), latest(instance, key("raw", lane))
    assert dataset_event.run_id == raw_event.run_id == lanes["again"]
    with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
        version = content_version(conn, f'datasets."{lane.name}"')
        files = committed_files(conn, lane.name)
        logged_runs = {r[0] for r in conn.sql(f'SELECT DISTINCT run_id FROM raw."{lane.name}__file_log"').fetchall()}
    assert version == dataset_event.asset_materialization.metadata["dataset_version"].value
    recorded_files = raw_event.asset_materialization.metadata["raw_files"].value
    assert {f["source_uri"]: f["file_sha256"] for f in recorded_files} == {u: f["sha256"] for u, f in files.items()}
    # The file log holds the runs Dagster recorded only, and the changes are counted from the last record:
    # the new files of the killed raw runs arrive with this run, unless one of them was recorded.
    recorded_runs = {r.run_id for r in instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key("raw", lane)), limit=100).records}
    assert logged_runs <= recorded_runs
    arrived = sorted(c["uri"].rsplit("/", 1)[-1] for c in raw_event.asset_materialization.metadata[
        "file_changes"].value["arrived"])
    unrecorded = len(lane.raw_kills) + lane.file_before_rerun
    assert arrived == ([] if "after_event" in lane.raw_kills else [f"c{j}.csv" for j in range(1, unrecorded + 1)])
