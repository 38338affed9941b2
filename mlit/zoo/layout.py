"""The zoo on disk (docs/zoo.md): pretraining/<model>/ and finetuning/<pretrained>/<model>/,
each with config.json, result.json (one JSON line per epoch, epoch 0 before training),
checkpoint_0000XY/model.pt for every epoch, and status.json (ours: running, done, failed)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from mlit import checkpoint as ckpt
from mlit.files import read_jsonl, write_json


def model_dirs(zoo_dir: str | Path) -> list[Path]:
    zoo_dir = Path(zoo_dir)
    return sorted(p.parent for p in zoo_dir.glob("*ing/**/status.json"))  # written first


def read_results(model_dir: Path) -> list[dict]:
    return read_jsonl(Path(model_dir) / "result.json")


def epochs_saved(model_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in Path(model_dir).glob("checkpoint_*")
                  if (p / "model.pt").exists())


def load(zoo_dir: str | Path, model: str, epoch: int | None = None):
    """(config, results, state_dict) of a zoo model at an epoch (default: the last saved).
    `model` is its path in the zoo, e.g. 'finetuning/mae_seed0/ft_lr1e-03_adamw_linear_seed1'."""
    model_dir = Path(zoo_dir) / model
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise ckpt.CheckpointError(f"no zoo model at {model_dir} (no config.json)")
    saved = epochs_saved(model_dir)
    if epoch is None:
        if not saved:
            raise ckpt.CheckpointError(f"{model_dir} has no checkpoint yet")
        epoch = saved[-1]
    state = ckpt.load(ckpt.epoch_path(model_dir, epoch))["model"]
    return json.loads(config_path.read_text()), read_results(model_dir), state


def set_status(model_dir: Path, state: str, **extra) -> None:
    write_json(model_dir / "status.json", {"state": state, "host": socket.gethostname(),
                                           "pid": os.getpid(), "time": time.time(), **extra})


def status(model_dir: Path) -> str:
    """done, running, failed, interrupted (a run that died without a word) or pending."""
    path = Path(model_dir) / "status.json"
    if not path.exists():
        return "pending"
    info = json.loads(path.read_text())
    if info["state"] == "running" and info["host"] == socket.gethostname():
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return "interrupted"
        except PermissionError:
            pass
    return info["state"]


def summarize(zoo_dir: str | Path) -> dict[str, list[str]]:
    """Every model of a zoo folder by state: done, running, failed, interrupted, pending."""
    zoo_dir = Path(zoo_dir)
    states: dict[str, list[str]] = {}
    for model_dir in model_dirs(zoo_dir):
        states.setdefault(status(model_dir), []).append(str(model_dir.relative_to(zoo_dir)))
    return states
