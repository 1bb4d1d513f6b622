"""Resources shared by the asset groups: the DuckDB warehouse, the training device, the launcher
(defs/training/launcher.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ft_assets.lib.config import Device, Precision, ProjectConfig
from ft_assets.lib.storage import require_storage_root, require_writable
from ft_assets.lib.warehouse import Commit, last_commit

# DuckDB allows one writing process per file: assets that write the warehouse queue on this pool.
WAREHOUSE_POOL = "duckdb_warehouse"
# Training assets queue on this pool so runs never share the accelerator.
GPU_POOL = "gpu"


class WarehouseResource(DuckDBResource):
    """The project's DuckDB file. DuckDBResource retries a failed connect for about 100 s, which waits
    out another run's lock; a file or folder that cannot be written, or a storage root that is a file,
    fails at once, naming it. `connection_config` carries storage.warehouse_memory as DuckDB's
    memory_limit: what a step may hold, past which DuckDB spills to <database>.tmp/."""

    @contextmanager
    def get_connection(self):
        database = Path(self.database)
        require_storage_root(database.parent)
        require_writable(database)
        with super().get_connection() as conn:
            # A long query would draw a progress bar into the step's log, one line per update.
            conn.execute("SET enable_progress_bar = false")
            try:
                yield conn
            except duckdb.OutOfMemoryException as e:
                limit = (self.connection_config or {}).get("memory_limit", "DuckDB's default")
                raise dg.Failure(
                    f"the warehouse ran out of memory: DuckDB may hold {limit} (storage.warehouse_memory in the "
                    "project YAML) and this step needed more than that even after spilling to disk. Raise "
                    "storage.warehouse_memory (the default 512MB builds 10 million rows of short texts; "
                    f"see docs/configuration.md). DuckDB said: {str(e).splitlines()[0]}") from e


class GpuResource(dg.ConfigurableResource):
    """The accelerator a training run may use. Only training assets require it.

    device: auto (CUDA when torch sees it, else CPU), cpu, or cuda.
    precision: auto (bf16 on CUDA when supported, else fp32), fp32, bf16 (CPU too) or fp16 (CUDA only).
    processes: training processes, one per GPU; above 1 the training command runs under torchrun
        (DDP: NCCL between GPUs, gloo between CPU processes), and on Kubernetes the pod asks for
        that many `nvidia.com/gpu`.
    """

    device: Device = Field("auto", description="auto, cpu or cuda")
    precision: Precision = Field("auto", description="auto, fp32, bf16 or fp16")
    processes: int = Field(1, ge=1, description="training processes (GPUs); above 1, torchrun with DDP")

    def training_command(self, python: str, spec: str) -> list[str]:
        """The command that trains from SPEC.json: one process, or torchrun over `processes`."""
        if self.processes == 1:
            return [python, "-m", "ft_assets.lib.training", spec]
        # It execs torchrun --standalone (a rendezvous on a free local port, so two jobs on one machine
        # never collide) once it has asked to die with its parent.
        return [python, "-m", "ft_assets.lib.training", f"--processes={self.processes}", spec]


def build_resources(config: ProjectConfig) -> dict:
    """The project's resources, by name: warehouse, gpu and launcher, each after the project's name when it
    shares its code location with others (two projects have two warehouses)."""
    from ft_assets.defs.training.launcher import default_launcher

    return {
        config.qualified_name("warehouse"): WarehouseResource(
            database=str(config.warehouse_path),
            connection_config={"memory_limit": config.storage.warehouse_memory}),
        config.qualified_name("gpu"): GpuResource(**config.gpu.model_dump()),
        # A kubernetes launcher finds its cluster when a run starts, not when this loads.
        config.qualified_name("launcher"): default_launcher(),
    }


def resource_keys(config: ProjectConfig, *names: str) -> set[str]:
    """What an asset of this project requires, for `required_resource_keys`."""
    return {config.qualified_name(name) for name in names}


def project_resource(context: dg.AssetExecutionContext, config: ProjectConfig, name: str):
    """This project's resource `name` (warehouse, gpu, launcher) from a step's context."""
    return getattr(context.resources, config.qualified_name(name))


def asset_key(config: ProjectConfig, *parts: str) -> dg.AssetKey:
    """The key of one of this project's assets, e.g. asset_key(config, "checkpoints", recipe.name)."""
    return dg.AssetKey(config.key_path(*parts))


def metadata_values(materialization: dg.AssetMaterialization) -> dict:
    """A materialization's metadata as plain values (the path, the JSON, the number)."""
    return {name: entry.value for name, entry in materialization.metadata.items()}


def contract_metadata(failures: list) -> dict:
    """A contract check's metadata (lib/schemas.py): a line per broken rule, and each with its count and
    its first failing rows (file, row, value)."""
    return {"problems": dg.MetadataValue.md("\n".join(f"- {f.line()}" for f in failures) or "none"),
            "failures": dg.MetadataValue.json([{"column": f.column, "requirement": f.requirement, "rows": f.rows,
                                                "sample": f.sample} for f in failures])}


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    """The metadata of the asset's latest materialization as plain values; empty when there is none."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return metadata_values(event.asset_materialization)


def latest_partition_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict:
    """The metadata of one partition's latest materialization as plain values; empty when there is none."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]),
                                              limit=1).records
    return metadata_values(records[0].asset_materialization) if records else {}


def unrecorded_commit(conn, instance: dg.DagsterInstance, key: dg.AssetKey, table: str) -> Commit | None:
    """The warehouse's last commit of `table` when Dagster holds no record of it: the run that committed
    it is not the run of `key`'s latest materialization (killed between its COMMIT and that record, or
    not a Dagster run at all). None when the record and the warehouse agree, or the warehouse predates
    commit records."""
    commit = last_commit(conn, table)
    if commit is None:
        return None
    event = instance.get_latest_materialization_event(key)
    return None if event is not None and event.run_id == commit.run_id else commit


def describe_commit(commit: Commit) -> str:
    """`run 1a2b3c4d at 2026-12-01 10:20:00+00:00` (or `outside Dagster`), for log lines and errors."""
    who = f"run {commit.run_id[:8]}" if commit.run_id else "outside Dagster"
    return f"{who} at {commit.committed_at:%Y-%m-%d %H:%M:%S %Z}".rstrip()
