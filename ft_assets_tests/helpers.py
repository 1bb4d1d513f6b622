"""Helpers that more than one test file uses: materializing, project YAML and recipe builders, training
specs, process probes and a `dagster dev` driver. Fixtures stay in conftest.py."""

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

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ft_assets.defs import build_definitions
from ft_assets.lib.config import RecipeConfig, load_config
from ft_assets_tests.conftest import LABELS, LEARNING_TRAINING, REPO, ticket_rows, write_project


def materialize_all(defs: dg.Definitions, instance: dg.DagsterInstance, selection=None, raise_on_error=True):
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    return dg.materialize(assets, resources=defs.resources, instance=instance, selection=selection,
                          raise_on_error=raise_on_error)


MINIMAL_CONFIG = {
    "corpora": [{"name": "c", "path": "raw/c/", "format": "csv", "label_field": "label"}],
    "datasets": [{"name": "d", "corpus": "c"}],
    "recipes": [{"name": "r", "dataset": "d", "method": "lora"}],
}


def materialize_project(folder: Path, payload: dict):
    """The project `payload` written to <folder>/project.yaml and materialized whole in an ephemeral
    instance, failures kept: (config, defs, instance, result)."""
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    config = load_config(path)
    defs = build_definitions(config)
    instance = dg.DagsterInstance.ephemeral()
    return config, defs, instance, materialize_all(defs, instance, raise_on_error=False)


def write_config(tmp_path: Path, payload: dict) -> Path:
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def learning_recipes(model_dir, full_gates: dict | None = None) -> list[dict]:
    """tiny_full, which learns (gates: `full_gates`, else a forgetting ceiling it meets), and tiny_head,
    which does not: a head alone on random features stays at or below the majority class."""
    return [
        {"name": "tiny_full", "dataset": "tickets", "base_model": str(model_dir), "method": "full",
         "training": {**LEARNING_TRAINING, "learning_rate": 3e-3, "head_learning_rate": 3e-3},
         "gates": {"max_forgetting": 1.5} if full_gates is None else full_gates},
        {"name": "tiny_head", "dataset": "tickets", "base_model": str(model_dir), "method": "head_only",
         "training": {**LEARNING_TRAINING, "learning_rate": 2e-2}},
    ]


def classification_rows(n_per_label, seed=0):
    pairs = ticket_rows(n_per_label, seed)
    return {"text": [t for _, t in pairs], "label": [label for label, _ in pairs]}


# Larger steps than the defaults: a tiny random model and a few steps.
CLASSIFICATION_LEARNING_RATE = {"full": 1e-3, "freeze": 1e-3, "head_only": 5e-3, "lora": 5e-3, "rslora": 5e-3,
                                "dora": 5e-3, "ia3": 5e-3, "prompt_tuning": 3e-2}
CLASSIFICATION_METHOD_ARGS = {"lora": {"r": 4, "alpha": 8}, "rslora": {"r": 4, "alpha": 8},
                              "dora": {"r": 4, "alpha": 8}, "freeze": {"layers": 1},
                              "prompt_tuning": {"num_virtual_tokens": 4}}


def classification_recipe(model_dir, method, **training):
    return RecipeConfig(name=f"t_{method}", dataset="d", base_model=str(model_dir), method=method,
                        method_args=CLASSIFICATION_METHOD_ARGS.get(method, {}),
                        training={"epochs": 4, "batch_size": 16, "max_length": 16,
                                  "learning_rate": CLASSIFICATION_LEARNING_RATE[method], "log_every_steps": 1,
                                  **training})


CAUSAL_LEARNING_RATE = {"full": 3e-3, "freeze": 3e-3, "lora": 1e-2, "rslora": 1e-2, "dora": 1e-2, "ia3": 3e-2,
                        "prompt_tuning": 3e-1, "prefix_tuning": 3e-2}
CAUSAL_METHOD_ARGS = {"lora": {"r": 4, "alpha": 8}, "rslora": {"r": 4, "alpha": 8}, "dora": {"r": 4, "alpha": 8},
                      "freeze": {"layers": 1}, "prompt_tuning": {"num_virtual_tokens": 4},
                      "prefix_tuning": {"num_virtual_tokens": 4}}


def causal_recipe(model_dir, method, **training):
    return RecipeConfig(name=f"c_{method}", dataset="d", base_model=str(model_dir), method=method,
                        method_args=CAUSAL_METHOD_ARGS.get(method, {}),
                        training={"epochs": 3, "batch_size": 8, "max_length": 96,
                                  "learning_rate": CAUSAL_LEARNING_RATE[method], "log_every_steps": 1, **training})


def causal_rows(texts):
    return {"text": texts, "label": [None] * len(texts)}


def write_spec(folder: Path, name: str, model_dir: Path, **training) -> Path:
    train, validation = folder / "train.parquet", folder / "validation.parquet"
    pq.write_table(pa.table(classification_rows(30)), train)
    pq.write_table(pa.table(classification_rows(8, seed=1)), validation)
    r = classification_recipe(model_dir, "full",
                              **{"epochs": 3, "learning_rate": 3e-3, "log_every_steps": 2, **training})
    spec = {"recipe": r.model_dump(mode="json"), "task": "classification", "labels": LABELS,
            "train_path": str(train), "validation_path": str(validation), "output_dir": str(folder / name),
            "device": "cpu", "precision": "auto"}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def materialize_with_gpu_settings(tmp_path: Path, model_dir: Path, gpu: dict):
    """Materializes one recipe's checkpoint (and what it needs) under the YAML `gpu:` block given."""
    config_path = write_project(tmp_path, model_dir, recipes=[
        {"name": "ddp", "dataset": "tickets", "base_model": str(model_dir), "method": "full",
         "training": {"epochs": 1, "batch_size": 4, "max_length": 16}}])
    raw = yaml.safe_load(config_path.read_text())
    raw["gpu"] = gpu
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    defs = build_definitions(load_config(config_path))
    return materialize_all(defs, dg.DagsterInstance.ephemeral(), selection="*checkpoints/ddp", raise_on_error=False)


def step_failure(result) -> str:
    return str(next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)


def training_processes() -> list[int]:
    """Pids of `python -m ft_assets.lib.training` processes that are children of this test process."""
    return [pid for pid, ppid in parent_pids().items()
            if ppid == os.getpid() and b"ft_assets.lib.training" in cmdline(pid).split(b"\0")]


def parent_pids() -> dict[int, int]:
    """Every running process's parent, from /proc: pid -> parent pid."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def cmdline(pid: int) -> bytes:
    """The process's command line; empty once it has exited (a zombie has none either)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


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
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, home: Path):
        self.url, self.proc, self.log, self.home = url, proc, log, home  # home: its DAGSTER_HOME

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
    running = Server(f"http://127.0.0.1:{port}", proc, log, home)
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
