"""Step checkpoints, so a killed training run continues where it stopped instead of starting over.

Every `save_every_steps` optimizer steps the run writes what it needs to continue exactly: the
trainable weights, the optimizer, scheduler and loss-scaler states, the RNG state of every process,
the position in the epoch and the metrics logged so far. A rerun of the same training (same recipe,
data, base model and number of processes: `resume_key`) loads the newest complete one. A step
folder counts only once `latest.json` names it, written last, so a kill while saving leaves the
previous step. These are not checkpoints to use: nothing here is registered, and the folder is
removed once the checkpoint is saved.

The folder is a local path or an s3:// URI (a training pod keeps its step states in the bucket, as
its disk goes with it).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from ft_assets.lib.config import stable_hash

LATEST_FILE = "latest.json"


def resume_key(*parts: Any) -> str:
    """A stable name for "the same training": any change to a part starts afresh."""
    return stable_hash(parts)[:16]


def trainable_state(model, device: str | None = None) -> dict:
    """The parameters that training changes, copied (to `device`, e.g. the CPU to keep them off the
    accelerator; None: where they are); the frozen rest is rebuilt from the base model."""
    return {name: p.detach().to(device, copy=True) if device else p.detach().clone()
            for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """The torch generators (dropout draws from them; batch order is seeded per epoch, not drawn)."""
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_step(folder: str, step: int, rank: int, state: dict | None) -> None:
    """Writes this process's RNG state, and `state` (the shared part, from rank 0), for `step`."""
    step_dir = posixpath.join(folder, f"step-{step:08d}")
    _save(rng_state(), posixpath.join(step_dir, f"rng-{rank}.pt"))
    if state is not None:
        _save(state, posixpath.join(step_dir, "state.pt"))


def mark_complete(folder: str, step: int, world_size: int) -> None:
    """Names `step` as the one to resume from (rank 0, after every process saved), drops older steps."""
    fs, root = _filesystem(folder)
    latest = posixpath.join(root, LATEST_FILE)
    record = json.dumps({"step": step, "world_size": world_size}).encode()
    if _is_local(fs):  # a rename: a kill mid-write leaves the previous latest.json whole
        fs.pipe_file(latest + ".tmp", record)
        fs.mv(latest + ".tmp", latest)
    else:  # an object store's PUT is whole or absent
        fs.pipe_file(latest, record)
    for old in fs.glob(posixpath.join(root, "step-*")):
        if posixpath.basename(old.rstrip("/")) != f"step-{step:08d}":
            fs.rm(old, recursive=True)


def load_latest(folder: str, rank: int) -> tuple[dict, dict] | None:
    """(shared state, this process's RNG state) of the newest complete step, or None."""
    import torch

    fs, root = _filesystem(folder)
    latest = posixpath.join(root, LATEST_FILE)
    if not fs.isfile(latest):
        return None
    step_dir = posixpath.join(root, f"step-{json.loads(fs.cat_file(latest))['step']:08d}")
    # Tensors and plain values only: a folder others can write to is no place to unpickle code from.
    with fs.open(posixpath.join(step_dir, "state.pt"), "rb") as shared, \
            fs.open(posixpath.join(step_dir, f"rng-{rank}.pt"), "rb") as own:
        return torch.load(shared, weights_only=True), torch.load(own, weights_only=True)


def remove(folder: str) -> None:
    """Drops every step state under `folder` (the checkpoint is saved: nothing to resume)."""
    fs, root = _filesystem(folder)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _save(obj, url: str) -> None:
    # A step file may be half written when a kill strikes; latest.json names a step only once it is whole.
    import torch

    fs, path = _filesystem(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        torch.save(obj, f)


def _filesystem(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)
