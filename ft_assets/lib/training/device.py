"""The device and precision a run trains in, and how much memory it took."""

from __future__ import annotations

import resource
from pathlib import Path


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def describe_device(device: str) -> str:
    """A person-readable name of the device, for reports: the GPU model, or the CPU model and threads."""
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def resolve_precision(precision: str, device: str) -> str:
    import torch

    if precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device != "cuda":  # its loss scaling is CUDA's
        raise ValueError(f"precision 'fp16' needs a CUDA device; on {device} use 'bf16', 'fp32' or 'auto'")
    return precision


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compiles(cfg, device: str) -> bool:
    """Whether training.compile compiles on `device` (auto: on CUDA only)."""
    return cfg.compile is True or (cfg.compile == "auto" and device == "cuda")
