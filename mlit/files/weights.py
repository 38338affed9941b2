"""Fitting weights to a model: the first tensor that does not fit, in words, and the checks a
model file's weights pass before they are used (finite; the encoder a recipe builds).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlit.files.checkpoint import CheckpointError
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiTEncoder


def describe(name: str, cfg: MLiTConfig) -> str:
    """e.g. 'mlit_xs (embed_dim=128, depth=12)'."""
    return f"{name} (embed_dim={cfg.embed_dim}, depth={cfg.depth})"


def check_finite(state: dict, path: Path) -> None:
    """Weights with NaN or infinity give NaN everywhere: refuse them, naming the first."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            what = "NaN" if torch.isnan(tensor).any() else "infinity"
            raise CheckpointError(f"{path}: tensor {name} holds {what}; the weights are "
                                  "damaged (or training diverged before they were saved)")


def first_mismatch(expected: dict, found: dict, prefix: str = "") -> str | None:
    """The first tensor that differs in name or shape, in words; None if all fit."""
    for name, tensor in expected.items():
        if name not in found:
            return f"{prefix}{name} is missing"
        if tuple(found[name].shape) != tuple(tensor.shape):
            return (f"{prefix}{name} is {tuple(found[name].shape)}, expected "
                    f"{tuple(tensor.shape)}")
    extra = [name for name in found if name not in expected]
    return f"{prefix}{extra[0]} is not part of the model" if extra else None


def expected_state(module_factory) -> dict:
    """Names and shapes of a module's state, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return module_factory().state_dict()


def load_weights(module: nn.Module, state: dict, what: str) -> nn.Module:
    """module.load_state_dict(state), with a one-line error naming the first mismatch."""
    problem = first_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{what}: weights do not fit the model ({problem})")
    module.load_state_dict(state)
    return module


def check_encoder(found: dict, source: str, held: str, cfg: MLiTConfig, name: str,
                  key: str) -> dict:
    """Encoder weights `found` in `source` (holding the model `held` describes), checked
    against the encoder the recipe builds (`cfg`, registry `name`); `key` names the recipe
    field for the message."""
    if not found:
        raise CheckpointError(f"{key} {source}: holds no encoder weights (keys 'encoder.*')")
    problem = first_mismatch(expected_state(lambda: MLiTEncoder(cfg)), found, "encoder.")
    if problem:
        raise CheckpointError(f"{key} {source}: holds {held}, this recipe builds "
                              f"{describe(name, cfg)}; first mismatching tensor: {problem}")
    return found
