"""Optimisation (docs/architecture.md, section 10): parameter groups with layer-wise lr decay and no weight decay on
biases, norms and positional embeddings; AdamW, SGD or LARS; per-step warm-up and cosine decay.
Frozen parameters (a linear probe's encoder) are in no group."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlit.recipe.schema import Stage


def no_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """Biases (expert biases are 2-D), norm weights, positional embeddings, mask tokens."""
    return param.ndim <= 1 or name.endswith("bias") or name in skip


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """MAE's param_groups_lrd: group id (layer, decay?); lr_scale = decay^(L + 1 - layer)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay != 1.0 and not hasattr(model, "layer_id"):
        raise ValueError(f"layer_decay={layer_decay}: {type(model).__name__} has no layers "
                         "to decay over; use 1.0")
    top = model.cfg.depth + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = model.layer_id(name) if layer_decay != 1.0 else top
        decay = not no_decay(name, param, skip)
        group = groups.setdefault((layer, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (top - layer), "layer_id": layer})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, stage: Stage) -> torch.optim.Optimizer:
    groups = param_groups(model, stage.weight_decay, stage.layer_decay)
    # fused kernels: on CUDA one launch per step, and the fp16 GradScaler hands them its inf
    # check on the device instead of syncing the host every step; on the CPU one pass over
    # each tensor instead of a dozen operations for each of the MoE layers' many small ones
    # (an mLiT-XXS step 3-6% faster at batch 32, docs/benchmarks.md)
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]) or None
    if stage.optimizer == "lars":  # MAE's linear probe: timm's LARS, trust ratio where decayed
        from timm.optim import Lars

        return Lars(groups, lr=stage.lr, momentum=stage.momentum)
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, fused=fused)


def lr_at(step: int, total_steps: int, warmup_steps: int, stage: Stage) -> float:
    """Linear warm-up from 0, then cosine decay to min_lr (or constant), per step."""
    if step < warmup_steps:
        return stage.lr * (step + 1) / warmup_steps
    if stage.schedule == "constant":
        return stage.lr
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return stage.min_lr + (stage.lr - stage.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
