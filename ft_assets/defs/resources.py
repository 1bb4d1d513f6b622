"""Resources shared by the asset groups: the DuckDB warehouse, the training device, the Pipes launcher."""

from __future__ import annotations

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
