"""Checkpoints written atomically (a temp file in the same folder, fsync, rename), so a run
killed mid-write leaves the previous checkpoint intact, and resume state read back."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


class CheckpointMissing(FileNotFoundError):
    """A checkpoint named by a recipe does not exist or is unreadable."""


def save_atomic(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def epoch_path(stage_dir: str | Path, epoch: int) -> Path:
    """Where a run that keeps every epoch writes that epoch's weights (the zoo layout)."""
    return Path(stage_dir) / f"checkpoint_{epoch:06d}" / "model.pt"


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointMissing(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise CheckpointMissing(f"checkpoint {path} cannot be read ({err})") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def encoder_state(checkpoint: dict) -> dict:
    """The encoder's weights from an MAE or classifier checkpoint."""
    model = checkpoint.get("model", checkpoint)
    state = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")}
    if not state:
        raise CheckpointMissing("checkpoint holds no encoder weights (keys 'encoder.*')")
    return state
