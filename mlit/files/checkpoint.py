"""Run checkpoints: written atomically (serialised in memory, then a synced temporary file and
a rename), so a run killed mid-write keeps the previous checkpoint intact; read back with
`torch.load(weights_only=True)`, so opening a file runs no code from it. Exact resume needs no
random state: every draw is keyed by where it is made (mlit/data/seeds.py). What a checkpoint
holds is described in docs/architecture.md ("Files").
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from mlit.errors import BadInput, first_line
from mlit.files.atomic import write_bytes_atomic

# numpy's legacy RNG state as older checkpoints stored it (an ndarray of uint32 keys), so that
# they still load; checkpoints no longer hold random states
_NUMPY_GLOBALS = [np.ndarray, np.dtype, np._core.multiarray._reconstruct,
                  type(np.dtype(np.uint32))]


class CheckpointError(BadInput):
    """A checkpoint or model file that is missing, damaged or not the one expected."""


# every tensor's bytes, hashed when a checkpoint is written and checked when it is read: a
# zip archive from torch.save does not check its own members, so flipped bytes in weights a
# reader never uses (a pre-training's decoder under linprobe) would otherwise pass silently
DIGEST = "tensors_sha256"


def weights_digest(named_bytes) -> str:
    """sha256 over (name, bytes) of every tensor, in name order: what an export carries in
    `weights_sha256` and a checkpoint in `tensors_sha256`, so that damaged weights are found
    when the file is read (neither torch.save's zip, safetensors nor ONNX checks them)."""
    digest = hashlib.sha256()
    for name, data in sorted(named_bytes):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def check_digest(path, expected: str | None, named_bytes, mismatch: str) -> None:
    """CheckpointError `{path}: {mismatch}` when the tensors' digest is not the one the file
    carries (None: a file written before digests, nothing to check)."""
    if expected is not None and weights_digest(named_bytes) != expected:
        raise CheckpointError(f"{path}: {mismatch}")


def tensor_bytes(state: dict[str, torch.Tensor]):
    return [(k, v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            for k, v in state.items()]


def named_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint's nested dicts and lists, by its path (model/encoder...)."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, (list, tuple)) else ()
    found = {}
    for key, value in items:
        found.update(named_tensors(value, f"{prefix}/{key}"))
    return found


def save_atomic(obj, path: str | Path) -> None:
    """torch.save(obj) to `path` atomically, a dict with the digest of its tensors."""
    if isinstance(obj, dict):
        obj = {**obj, DIGEST: weights_digest(tensor_bytes(named_tensors(obj)))}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def epoch_path(stage_dir: str | Path, epoch: int) -> Path:
    """Where a run that keeps every epoch writes that epoch's weights (the zoo layout)."""
    return Path(stage_dir) / f"checkpoint_{epoch:06d}" / "model.pt"


def load(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint as a dict, or CheckpointError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6
            with open(path, "rb") as f:
                found = "a raw pickle" if f.read(1) == b"\x80" else "damaged, truncated or " \
                    "another format"
            raise CheckpointError(f"{path} is not a readable checkpoint ({found}: not the zip "
                                  "archive torch.save writes)")
        with warnings.catch_warnings(), torch.serialization.safe_globals(_NUMPY_GLOBALS):
            warnings.simplefilter("ignore")  # the unpickler's own notes; the error says it all
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror})") from None
    except Exception as err:  # truncated, empty, random bytes, a pickle of other objects
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged, truncated or "
                              f"another format: {first_line(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not an mLiT checkpoint (it holds a "
                              f"{type(obj).__name__}, not a dict of weights)")
    check_digest(path, obj.pop(DIGEST, None), tensor_bytes(named_tensors(obj)),
                 f"its tensors do not match the {DIGEST} written with them: the file is "
                 "damaged (use an earlier checkpoint, or train again)")
    return obj
