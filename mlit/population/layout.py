"""A population on disk (docs/zoo.md): a folder per run, e.g. a zoo's pretraining/<model>/ and
finetuning/<pretrained>/<model>/, each with config.json, result.json (one JSON line per epoch,
epoch 0 before training), checkpoint_0000XY/model.pt for every epoch, and status.json (ours:
running, done, failed)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from mlit.files import checkpoint as ckpt
from mlit.files.atomic import write_json
from mlit.files.jsonl import DamagedFile
from mlit.files.records import read_epochs


def model_dirs(zoo_dir: str | Path) -> list[Path]:
    zoo_dir = Path(zoo_dir)
    return sorted(p.parent for p in zoo_dir.glob("*ing/**/status.json"))  # written first


def read_results(model_dir: Path) -> list[dict]:
    """result.json, each line checked (mlit.files.records.EpochRecord); DamagedFile if not."""
    return read_epochs(Path(model_dir) / "result.json")


def problem(model_dir: Path) -> str | None:
    """Why a model folder marked done cannot be analysed (a half-written or edited zoo), or
    None. `zoo status` calls such a model damaged and `zoo analyze` skips it, naming why."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text())
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            return f"{model_dir / 'config.json'}: not the JSON object of a zoo model"
        results = read_results(model_dir)
    except DamagedFile as err:
        return str(err)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{model_dir / 'config.json'}: cannot be read ({err})"
    if not results:
        return f"{model_dir / 'result.json'}: no epoch recorded"
    stage = (config.get("recipe") or {}).get(config.get("stage"), {})
    if stage.get("epoch_checkpoints") and not epochs_saved(model_dir):
        return f"{model_dir}: no checkpoint_*/model.pt of any epoch"
    return None


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
    """done, running, failed, interrupted (a run that died without a word), pending, or
    damaged (its status.json, or the files of a done model, cannot be read: `problem`)."""
    path = Path(model_dir) / "status.json"
    if not path.exists():
        return "pending"
    try:
        info = json.loads(path.read_text())
        state = info["state"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        return "damaged"
    if state == "done" and problem(model_dir):
        return "damaged"
    if state == "running" and info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except (ProcessLookupError, KeyError, TypeError, ValueError):
            return "interrupted"
        except PermissionError:
            pass
    return state


def summarize(zoo_dir: str | Path) -> dict[str, list[str]]:
    """Every model of a zoo folder by state: done, running, failed, interrupted, pending."""
    zoo_dir = Path(zoo_dir)
    states: dict[str, list[str]] = {}
    for model_dir in model_dirs(zoo_dir):
        states.setdefault(status(model_dir), []).append(str(model_dir.relative_to(zoo_dir)))
    return states
