"""Step checkpoints, so a killed training run continues where it stopped instead of starting over.

Every `save_every_steps` optimizer steps the run writes what it needs to continue exactly: the
trainable weights, the optimizer, scheduler and loss-scaler states, the RNG state of every process,
the position in the epoch and the metrics logged so far. A rerun of the same training (same recipe,
data, base model and number of processes: `resume_key`) loads the newest complete one. A step
folder counts only once `latest.json` names it, written last, so a kill while saving leaves the
previous step. These are not checkpoints to use: nothing here is registered, and the folder is
removed once the checkpoint is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

LATEST_FILE = "latest.json"


def resume_key(*parts: Any) -> str:
    """A stable name for "the same training": any change to a part starts afresh."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(model) -> dict:
    """The parameters that training changes; the frozen rest is rebuilt from the base model."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


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


def save_step(folder: Path, step: int, rank: int, state: dict | None) -> Path:
    """Writes this process's RNG state, and `state` (the shared part, from rank 0), for `step`."""

    step_dir = folder / f"step-{step:08d}"
    step_dir.mkdir(parents=True, exist_ok=True)
    _save(rng_state(), step_dir / f"rng-{rank}.pt")
    if state is not None:
        _save(state, step_dir / "state.pt")
    return step_dir


def mark_complete(folder: Path, step: int, world_size: int) -> None:
    """Names `step` as the one to resume from (rank 0, after every process saved), drops older steps."""
    latest = folder / LATEST_FILE
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "world_size": world_size}))
    os.replace(tmp, latest)
    for old in folder.glob("step-*"):
        if old.name != f"step-{step:08d}":
            shutil.rmtree(old, ignore_errors=True)


def load_latest(folder: Path, rank: int) -> tuple[dict, dict] | None:
    """(shared state, this process's RNG state) of the newest complete step, or None."""
    import torch

    latest = folder / LATEST_FILE
    if not latest.is_file():
        return None
    step_dir = folder / f"step-{json.loads(latest.read_text())['step']:08d}"
    # Tensors and plain values only: a folder others can write to is no place to unpickle code from.
    return (torch.load(step_dir / "state.pt", weights_only=True),
            torch.load(step_dir / f"rng-{rank}.pt", weights_only=True))


def _save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
