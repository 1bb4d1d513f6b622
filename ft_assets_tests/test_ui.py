"""What `make ui` promises, checked against the real `dagster dev` over HTTP (no mocks).

The webserver, the daemon and the code location are started the way `make ui` starts them, over a
tiny project; then, through GraphQL as the UI does: the asset graph shows the five stage groups with
a description on every asset, and raw/tickets + datasets/tickets materialize and re-materialize; a run
whose process is killed fails and frees its pool slot.
"""

from __future__ import annotations

import os
import signal
import time

import dagster as dg
import pytest
import yaml

from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import dagster_dev, materialize_from_ui, selected_nodes, wait_for, wait_for_run


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
            assert executions, f"{node['assetKey']} carries asset checks"
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


def test_a_run_whose_process_is_killed_fails_and_gives_its_pool_slot_back(server):
    # The training step holds the gpu pool's one slot; SIGKILL its process (the run's, one step runs in
    # it) and the slot would stay claimed, so no training would ever start again, without the shipped
    # instance's run monitoring (free_slots_after_run_end_seconds).
    assert wait_for_run(server, materialize_from_ui(server, [["raw", "tickets"], ["datasets", "tickets"]])) == "SUCCESS"
    instance = dg.DagsterInstance.from_config(str(server.home))
    assert instance.run_monitoring_enabled
    run_id = materialize_from_ui(server, [["checkpoints", "tiny_head"]])

    def step_started_with_the_slot():
        starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        claimed = [s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]
        return starts[0].dagster_event.pid if starts and run_id in claimed else None

    os.kill(wait_for(step_started_with_the_slot, 120, "the training step to claim the gpu slot", server),
            signal.SIGKILL)
    assert wait_for_run(server, run_id) == "FAILURE"
    ended = time.monotonic()
    wait_for(lambda: not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots, 90,
             "the killed run's gpu slot to be freed", server)
    # Within the monitoring daemon's poll interval and free_slots_after_run_end_seconds (15 s each).
    assert time.monotonic() - ended < 60
