"""A training process killed with SIGKILL registers nothing and leaves no checkpoint directory; the next
materialization starts clean (and removes what a killed save left behind)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ft_assets.defs import build_definitions
from ft_assets.lib.config import load_config
from ft_assets_tests.conftest import write_project
from ft_assets_tests.helpers import materialize_all, training_processes

CHECKPOINT = dg.AssetKey(["checkpoints", "slow"])


def kill_training_once_it_has_started(killed: list[int]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        pids = training_processes()
        # Started and into its epochs: the process has been up for a moment.
        if pids:
            time.sleep(3)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.2)


def test_a_killed_training_process_registers_nothing_and_the_next_run_starts_clean(tmp_path, tiny_model_dir):
    recipe = {"name": "slow", "dataset": "tickets", "base_model": str(tiny_model_dir), "method": "full",
              "training": {"epochs": 200, "batch_size": 4, "max_length": 16}}
    config = load_config(write_project(tmp_path, tiny_model_dir, recipes=[recipe]))
    defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
    assert materialize_all(defs, instance, selection="*datasets/tickets").success
    recipe_dir = config.root / "checkpoints" / "slow"

    killed: list[int] = []
    killer = threading.Thread(target=kill_training_once_it_has_started, args=(killed,))
    killer.start()
    result = materialize_all(defs, instance, selection=[CHECKPOINT], raise_on_error=False)
    killer.join()
    assert killed, "the training process was never seen"
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = str(failure.event_specific_data.error)
    assert "checkpoints/slow: training failed and nothing was registered" in description
    assert "External execution process failed with code -9" in description
    assert instance.get_latest_materialization_event(CHECKPOINT) is None
    assert not recipe_dir.exists() or not [p for p in recipe_dir.iterdir() if not p.name.startswith(".")]

    # What a kill during the final save leaves: a staging directory, never a checkpoint.
    recipe_dir.mkdir(parents=True, exist_ok=True)
    (recipe_dir / ".20261126T000000Z-deadbeef.partial-0123abcd").mkdir()
    (recipe_dir / ".20261126T000000Z-deadbeef.partial-0123abcd" / "model.safetensors").write_bytes(b"half")
    quick = build_definitions(load_config(write_project(tmp_path, tiny_model_dir, recipes=[
        {**recipe, "training": {"epochs": 1, "batch_size": 16, "max_length": 16}}])))
    again = materialize_all(quick, instance, selection=[CHECKPOINT])
    assert again.success
    assert [p.name for p in recipe_dir.iterdir()] == [
        again.asset_materializations_for_node("checkpoints__slow")[0].metadata["version"].value]


KILL_AT_COMMIT = """
import os, signal, sys
import duckdb
from ft_assets.lib.datasets.cleaning import build_dataset
from ft_assets.lib.config import DatasetConfig


class DiesAtCommit:
    # The connection, except that the process is killed the moment cleaning would commit.
    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql, *args):
        if sql.strip() == "COMMIT":
            os.kill(os.getpid(), signal.SIGKILL)
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


conn = duckdb.connect(sys.argv[1])
build_dataset(DiesAtCommit(conn), DatasetConfig(name="d", corpus="c", labels=["billing", "shipping", "access"],
                                                 split_salt="another split"))
"""


def test_a_cleaning_run_killed_before_it_commits_leaves_the_previous_version_intact(tmp_path):
    from ft_assets.lib.datasets.cleaning import build_dataset, summarize_dataset
    from ft_assets.lib.config import CorpusConfig, DatasetConfig
    from ft_assets.lib.ingest.readers import read_corpus, write_raw
    from ft_assets_tests.conftest import ticket_rows, write_csv

    write_csv(tmp_path / "c" / "a.csv", ticket_rows(20))
    warehouse = tmp_path / "w.duckdb"
    dataset = DatasetConfig(name="d", corpus="c", labels=["billing", "shipping", "access"])
    with duckdb.connect(str(warehouse)) as conn:
        write_raw(conn, "c", read_corpus(CorpusConfig(name="c", path="c", format="csv", label_field="label"),
                                         tmp_path / "c"))
        before = build_dataset(conn, dataset)
        splits_before = conn.sql('SELECT row_id, split FROM datasets."d" ORDER BY row_id').fetchall()

    killed = subprocess.run([sys.executable, "-c", KILL_AT_COMMIT, str(warehouse)], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]

    with duckdb.connect(str(warehouse)) as conn:
        assert summarize_dataset(conn, dataset) == before
        assert conn.sql('SELECT row_id, split FROM datasets."d" ORDER BY row_id').fetchall() == splits_before


@contextlib.contextmanager
def tmpfs(root: Path, size: str):
    """A real small file system at `root` for the storage root (root with CAP_SYS_ADMIN, as on our
    machines and CI); unmounted afterwards."""
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:  # a container without the capability: say so in the test report
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


QUICK = {"name": "slow", "dataset": "tickets", "method": "full",
         "training": {"epochs": 1, "batch_size": 16, "max_length": 16}}


def test_a_full_disk_fails_training_with_the_reason_and_leaves_nothing(tmp_path, tiny_model_dir):
    with tmpfs(tmp_path / "data", "8m") as root:
        config = load_config(write_project(tmp_path, tiny_model_dir, recipes=[
            {**QUICK, "base_model": str(tiny_model_dir)}]))
        defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
        assert materialize_all(defs, instance, selection="*datasets/tickets").success
        filler = root / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(root).free - 50_000))
        result = materialize_all(defs, instance, selection=[CHECKPOINT], raise_on_error=False)
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "No space left on device" in str(failure.event_specific_data.error)
        assert instance.get_latest_materialization_event(CHECKPOINT) is None
        assert not list((root / "checkpoints" / "slow").iterdir())  # no checkpoint, no staging folder
        filler.unlink()
        assert materialize_all(defs, instance, selection=[CHECKPOINT]).success


def test_an_unwritable_storage_root_fails_naming_it_and_corrupts_nothing(tmp_path, tiny_model_dir):
    with tmpfs(tmp_path / "data", "16m") as root:
        config = load_config(write_project(tmp_path, tiny_model_dir, recipes=[]))
        defs, instance = build_definitions(config), dg.DagsterInstance.ephemeral()
        assert materialize_all(defs, instance, selection="*datasets/tickets").success
        with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
            before = conn.sql('SELECT * FROM datasets."tickets" ORDER BY row_id').fetchall()
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        try:
            result = materialize_all(defs, instance, selection="*datasets/tickets", raise_on_error=False)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = str(failure.event_specific_data.error)
        assert str(config.warehouse_path) in message and "Read-only file system" in message
        with duckdb.connect(str(config.warehouse_path), read_only=True) as conn:
            assert conn.sql('SELECT * FROM datasets."tickets" ORDER BY row_id').fetchall() == before


def test_a_warehouse_step_out_of_memory_fails_naming_the_setting_and_keeps_the_tables(tmp_path):
    from ft_assets.defs.resources import WarehouseResource

    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"), connection_config={"memory_limit": "2MB"})
    with warehouse.get_connection() as conn:
        conn.execute("CREATE TABLE kept AS SELECT 1 AS x")
    with pytest.raises(dg.Failure) as failure, warehouse.get_connection() as conn:
        conn.execute("CREATE OR REPLACE TABLE kept AS SELECT i, repeat('x', 100) || i::VARCHAR AS s "
                     "FROM range(200000) t(i) ORDER BY s")
    assert failure.value.description.startswith(
        "the warehouse ran out of memory: DuckDB may hold 2MB (storage.warehouse_memory in the project YAML) and "
        "this step needed more than that even after spilling to disk. Raise storage.warehouse_memory")
    with warehouse.get_connection() as conn:
        assert conn.sql("SELECT * FROM kept").fetchall() == [(1,)]
