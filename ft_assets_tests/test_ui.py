"""What `make ui` promises, checked against the real `dagster dev` over HTTP (no mocks).

The webserver, the daemon and the code location are started the way `make ui` starts them, over a
tiny project; then, through GraphQL as the UI does: the asset graph shows the five stage groups with
a description on every asset, and raw/tickets + datasets/tickets materialize and re-materialize.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ft_assets_tests.conftest import write_project

REPO = Path(__file__).resolve().parent.parent
LOCATION = "ft_assets"
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restore_default_signals() -> None:
    # Some harnesses start pytest with SIGINT/SIGTERM ignored, which children inherit; dagster dev
    # would then survive teardown's SIGTERM (see ARCHITECTURE.md, "Dagster 1.13 pitfalls").
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """The `data` of a GraphQL answer; fails with the server's errors if there are any."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:
            # Query validation errors come back as HTTP 400 with the reasons in the body.
            pytest.fail(f"GraphQL HTTP {e.code}: {e.read().decode(errors='replace')}\nquery: {query}")
        assert not answer.get("errors"), f"GraphQL errors: {answer['errors']}\nquery: {query}"
        return answer["data"]


def wait_for(poll, timeout_s: float, what: str, server: Server | None = None):
    """Calls poll() until it returns something truthy; fails after timeout_s naming what it waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.proc.returncode} while waiting for {what}:\n"
                        f"{server.log_tail()}")
        result = poll()
        if result:
            return result
        time.sleep(0.5)
    tail = f":\n{server.log_tail()}" if server is not None else ""
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}{tail}")


LOCATION_STATUS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def location_loaded(server: Server) -> bool:
    try:
        urllib.request.urlopen(f"{server.url}/server_info", timeout=5).close()
    except OSError:
        return False  # not listening yet
    entries = server.graphql(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
    entry = next((e for e in entries if e["name"] == LOCATION), None)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    # A location that failed to import is LOADED too, with the error in place of the location.
    loaded = entry["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", f"code location failed to load: {loaded}"
    return True


@contextlib.contextmanager
def dagster_dev(tmp: Path, config_path: Path) -> Iterator[Server]:
    """`make ui`'s dagster dev (webserver, daemon, code server) over `config_path`, with a new instance in
    `tmp`, on a free port, in its own process group; the whole group is killed on the way out."""
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "data" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FT_ASSETS_CONFIG": str(config_path),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    port = free_port()
    log = tmp / "dagster_dev.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=restore_default_signals)
    running = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_for(lambda: location_loaded(running), STARTUP_TIMEOUT_S, "the ft_assets code location", running)
        yield running
    finally:
        # The whole session: dagster dev, its webserver, daemon, code server and any run workers.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever ignored SIGTERM, or outlived its parent
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("ui")
    # One recipe is enough for all five groups, and keeps code location loads short.
    config_path = write_project(tmp, tiny_model_dir, recipes=[
        {"name": "tiny_head", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "head_only",
         "training": {"epochs": 1, "batch_size": 16, "max_length": 16}}])
    # These tests click Materialize themselves: sensors off, so no automated run lands in between.
    raw = yaml.safe_load(config_path.read_text())
    raw["automation"] = {"enabled": False}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with dagster_dev(tmp, config_path) as running:
        yield running


ASSET_NODES = "{ assetNodes { assetKey { path } groupName description } }"


def test_asset_graph_shows_the_five_groups_and_every_asset_is_described(server):
    nodes = server.graphql(ASSET_NODES)["assetNodes"]
    assert {n["groupName"] for n in nodes} == {"raw", "datasets", "training", "evaluation", "models"}, nodes
    undescribed = ["/".join(n["assetKey"]["path"]) for n in nodes if not (n["description"] or "").strip()]
    assert not undescribed, f"assets without a description: {undescribed}"


LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = "query Run($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"
SELECTED_NODES = """
query Selected($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetMaterializations(limit: 1) { runId }
    assetChecksOrError { __typename ... on AssetChecks {
      checks { name executionForLatestMaterialization { runId status } } } }
  }
}
"""


def selected_nodes(server: Server, paths: list[list[str]]) -> list[dict]:
    keys = [{"path": p} for p in paths]
    nodes = server.graphql(SELECTED_NODES, {"keys": keys})["assetNodes"]
    assert sorted(n["assetKey"]["path"] for n in nodes) == sorted(paths), nodes
    for node in nodes:
        assert node["assetChecksOrError"]["__typename"] == "AssetChecks", node
    return nodes


def materialize_from_ui(server: Server, paths: list[list[str]]) -> str:
    """Launches the implicit asset job as the UI's Materialize button does; returns the run id.

    Like the button (executionParamsForAssetJob in the webapp), it selects the assets' checks too.
    """
    checks = [{"assetKey": n["assetKey"], "name": c["name"]}
              for n in selected_nodes(server, paths) for c in n["assetChecksOrError"]["checks"]]
    assert checks, "the raw and dataset assets carry asset checks"
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                     "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": p} for p in paths],
                     "assetCheckSelection": checks},
        "mode": "default",
        "executionMetadata": {"tags": []},
        "runConfigData": "{}",
    }
    launched = server.graphql(LAUNCH, {"executionParams": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def wait_for_run(server: Server, run_id: str) -> str:
    def terminal_status():
        run = server.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run["status"] if run["status"] in TERMINAL_RUN_STATUSES else None
    # Queued first: the daemon's run coordinator picks it up, then a run worker process loads the code.
    return wait_for(terminal_status, RUN_TIMEOUT_S, f"run {run_id} to finish", server)


def test_materialize_and_rematerialize_from_the_ui(server):
    selection = [["raw", "tickets"], ["datasets", "tickets"]]
    run_ids = []
    for attempt in ("materialize", "re-materialize"):
        run_id = materialize_from_ui(server, selection)
        status = wait_for_run(server, run_id)
        assert status == "SUCCESS", f"{attempt}: run {run_id} ended {status}\n{server.log_tail()}"
        # What the asset pages show afterwards: this run's materialization, and its checks passing.
        for node in selected_nodes(server, selection):
            assert [m["runId"] for m in node["assetMaterializations"]] == [run_id], (attempt, node)
            executions = [c["executionForLatestMaterialization"] for c in node["assetChecksOrError"]["checks"]]
            assert executions == [{"runId": run_id, "status": "SUCCEEDED"}] * len(executions), (attempt, node)
        run_ids.append(run_id)
    assert len(set(run_ids)) == 2


def test_two_runs_over_the_same_warehouse_at_once_both_succeed(server):
    # DuckDB takes one writing process per file: without the duckdb_warehouse pool the second run
    # would fail on the file lock. Launched together, the pool makes them take turns.
    selection = [["raw", "tickets"], ["datasets", "tickets"]]
    run_ids = [materialize_from_ui(server, selection), materialize_from_ui(server, selection)]
    statuses = [wait_for_run(server, run_id) for run_id in run_ids]
    assert statuses == ["SUCCESS", "SUCCESS"], f"{statuses}\n{server.log_tail()}"
    assert "Could not set lock" not in server.log.read_text(errors="replace")
