"""Resources shared by the asset groups: the DuckDB warehouse, the training device, the Pipes launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ft_assets.lib.config import ProjectConfig

# DuckDB allows one writing process per file: assets that write the warehouse queue on this pool.
WAREHOUSE_POOL = "duckdb_warehouse"
# Training assets queue on this pool so runs never share the accelerator.
GPU_POOL = "gpu"


class GpuResource(dg.ConfigurableResource):
    """The accelerator a training run may use. Only training assets require it.

    device: auto (CUDA when torch sees it, else CPU), cpu, or cuda.
    precision: auto (bf16 on CUDA when supported, else fp32), fp32, bf16 or fp16.
    """

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto, fp32, bf16 or fp16")


def build_resources(config: ProjectConfig) -> dict:
    return {
        "warehouse": DuckDBResource(database=str(config.warehouse_path)),
        "gpu": GpuResource(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def publish(config: ProjectConfig, local_path: Path, last: str | None = None) -> dict:
    """Mirrors a file or directory under the local root to the s3:// storage root, if there is one.

    Returns:
        {"published_uri": the s3:// URI} for the materialization's metadata; empty for a local root.
    """
    from ft_assets.lib.storage import publish_directory, publish_file

    uri = config.remote_uri(local_path)
    if uri is None:
        return {}
    if local_path.is_dir():
        publish_directory(local_path, uri, last)
    else:
        publish_file(local_path, uri)
    return {"published_uri": uri}


def local_copy(path: str, uri: str | None) -> Path:
    """A published directory on local disk: where it was written, else fetched from its s3:// copy
    (another machine wrote it) into the model cache."""
    if Path(path).exists() or uri is None:
        return Path(path)
    from ft_assets.lib.model_cache import fetch_model

    return fetch_model(uri)
