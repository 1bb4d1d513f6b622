"""Several training processes under torchrun (DDP), and batches that every process agrees on.

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE; without it the
run is a world of one and nothing here starts a process group. Every process computes the same
epoch order from the seed, so a global batch is cut into one slice per process, and a resumed or
single-process run with the same global batch sees the same examples at every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The process's place in a torchrun job (a world of one when not started by torchrun)."""
    return World(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 size=int(os.environ.get("WORLD_SIZE", 1)))


def require_a_gpu_each(processes: int, device: str) -> None:
    """Refuses more CUDA training processes than the machine has GPUs: NCCL cannot put two on one GPU.

    Raises:
        ValueError: naming the gpu.processes setting, the GPUs there are, and the way out.
    """
    if processes == 1 or device == "cpu":
        return
    import torch

    gpus = torch.cuda.device_count()
    if device == "auto" and gpus == 0:  # auto trains on the CPU here: gloo processes share the cores
        return
    if gpus == 0:
        raise ValueError(f"gpu.processes is {processes} on gpu.device cuda, but torch sees no CUDA GPU on this "
                         f"machine: set gpu.device to cpu or auto to train {processes} CPU processes")
    if processes > gpus:
        raise ValueError(f"gpu.processes is {processes}, but this machine has {gpus} CUDA GPU(s) and each training "
                         f"process needs its own: set gpu.processes to at most {gpus}, or gpu.device: cpu to "
                         f"train {processes} CPU processes")


def start_process_group(world: World, device: str) -> None:
    """NCCL between GPUs, gloo between CPU processes; one GPU per process, by local rank."""
    if world.size == 1:
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        # torchrun started by hand (not through gpu.processes) with more processes than GPUs.
        require_a_gpu_each(int(os.environ.get("LOCAL_WORLD_SIZE", world.size)), device)
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")


def end_process_group(world: World) -> None:
    if world.size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def sum_over_processes(values: list[float], world: World, device: str) -> list[float]:
    """Element-wise sum of `values` over every process (the values themselves in a world of one)."""
    if world.size == 1:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class GlobalBatchSampler:
    """This process's slice of each global batch (batch_size × world examples), epoch by epoch.

    `order(epoch)` gives the epoch's example order and must depend only on the seed and the epoch,
    so every process and a resumed run compute the same one. The last global batch is dropped when
    it is too small to give every process an example: DDP needs each process to take every step.
    """

    def __init__(self, order: Callable[[int], list[int]], n_examples: int, batch_size: int, world: World):
        self.order, self.n_examples, self.batch_size, self.world = order, n_examples, batch_size, world
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import numpy as np

        indices = self.order(self.epoch)
        span = self.batch_size * self.world.size
        for start in range(0, len(indices), span):
            chunk = indices[start:start + span]
            if len(chunk) < self.world.size:
                return
            yield [int(i) for i in np.array_split(chunk, self.world.size)[self.world.rank]]

    def __len__(self) -> int:
        span = self.batch_size * self.world.size
        full, rest = divmod(self.n_examples, span)
        return full + (rest >= self.world.size)


def epoch_order(kind: str, n_examples: int, seed: int, *, batch_size: int, lengths: list[int] | None = None,
                weights: list[float] | None = None) -> Callable[[int], list[int]]:
    """The order function of GlobalBatchSampler.

    kind:
        shuffle          a random permutation
        length_grouped   transformers' grouping: shuffled, cut into mega-batches (up to 50
                         batches each), each sorted longest first, with the longest batch of all
                         moved to the front so an out-of-memory shows on the first step
        weighted         drawn with replacement with the given per-example weights
    """
    import torch

    def order(epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        if kind == "weighted":
            drawn = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n_examples, replacement=True,
                                      generator=generator)
            return drawn.tolist()
        if kind == "length_grouped":
            from transformers.trainer_pt_utils import get_length_grouped_indices

            return list(get_length_grouped_indices(lengths, batch_size, generator=generator))
        return torch.randperm(n_examples, generator=generator).tolist()

    return order
