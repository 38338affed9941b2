"""One training step and evaluation: the code every stage, the zoo and the
analyses share. Mixed precision: fp16 with a gradient scaler (the paper's), or bf16."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from mlit.distributed import sum_over_ranks, world
from mlit.errors import BadInput, Fault, StopsARun
from mlit.model.encoder import MLiT, patchify, unpatchify
from mlit.model.mae import MaskedAutoEncoder
from mlit.model.moe import MoELayer


class NonFiniteLoss(Fault, StopsARun):
    """The loss was NaN or infinite; training stops and keeps the last good checkpoint (the
    runner adds where, and which: mlit.errors.context)."""

    def __init__(self, step: int):
        super().__init__(f"the loss became non-finite (step {step})")
        self.step = step

    def line(self) -> str:
        return self.with_context(str(self))


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype  # float32 means autocast off

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"train.device={name}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"train.device={name}: this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"train.device={name}: MPS is not available here")
    return device


def select_precision(device: torch.device, amp: str) -> Precision:
    if device.type != "cuda":
        if amp in ("fp16", "bf16"):
            raise BadInput(f"train.amp={amp}: mixed precision needs CUDA; use fp32 or auto")
        return Precision(device, torch.float32)
    dtype = {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16,
             "fp32": torch.float32}[amp]
    return Precision(device, dtype)


@dataclass
class StepTracker:
    """Running sums on the device, read on the host only at log points (no per-step sync).
    `first_bad_step` remembers the first step whose loss was not finite."""
    sums: dict = field(default_factory=dict)
    count: int = 0
    first_bad_step: torch.Tensor | None = None

    def add(self, step: int, parts: dict[str, torch.Tensor]) -> None:
        loss = parts["loss"].detach()
        bad = ~torch.isfinite(loss)
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), step,
                                          self.first_bad_step)
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.count += 1

    def check(self) -> None:
        if self.first_bad_step is not None and (step := int(self.first_bad_step)) >= 0:
            raise NonFiniteLoss(step)

    def progress(self) -> dict:
        """What a checkpoint inside an epoch keeps of it: each part's sum over every rank's
        steps (on the CPU) and the count of steps."""
        names = list(self.sums)
        sums = torch.stack([self.sums[k] for k in names]) if names else torch.zeros(0)
        return {"names": names, "sums": sum_over_ranks(sums).cpu(), "count": self.count}

    @classmethod
    def resumed(cls, progress: dict, device: torch.device) -> StepTracker:
        """The tracker of an epoch resumed mid-way: rank 0 carries the sums so far (means()
        adds every rank's), the others start from zero."""
        tracker = cls(count=progress["count"])
        for name, total in zip(progress["names"], progress["sums"]):
            tracker.sums[name] = (total if world().writer else torch.zeros_like(total)).to(device)
        return tracker

    def means(self) -> dict[str, float]:
        """Each part's mean over the epoch's steps; under torchrun, over every rank's."""
        if not self.sums:
            return {}
        w = world()
        sums = sum_over_ranks(torch.stack(list(self.sums.values())).double()) / w.size
        return {k: float(v) / max(self.count, 1) for k, v in zip(self.sums, sums.tolist())}


def to_device(images, device):
    """A batch of images, or SimCLR's pair of views joined into one (2B, C, H, W) batch."""
    if isinstance(images, (list, tuple)):
        images = torch.cat(images)
    return images.to(device, non_blocking=True)


def loss_parts(model: nn.Module, images, targets, label_smoothing: float = 0.0):
    """The stage's objective and its parts: the forward through the wrappers (DDP's hooks,
    the compiled graph), then the module's own loss_parts (classifiers: CE + w_moe * L_moe;
    MAE: docs/architecture.md, 8; SimCLR: InfoNCE + w_moe * L_moe)."""
    return unwrap(model).loss_parts(model(images), targets, label_smoothing)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def train_step(model, images, targets, optimizer, scaler, precision: Precision,
               clip_grad: float | None = None, label_smoothing: float = 0.0) -> dict:
    with precision.autocast():
        parts = loss_parts(model, images, targets, label_smoothing)
    scaler.scale(parts["loss"]).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return parts


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Evaluation mode inside the block; the model's own mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def expert_load(model: nn.Module) -> list[torch.Tensor]:
    """Share of routed tokens per expert, for every MoE layer (encoder, then decoder)."""
    return [m.last_load.float() / m.last_load.sum().clamp(min=1)
            for m in model.modules() if isinstance(m, MoELayer)]


@torch.no_grad()
def eval_batches(model: nn.Module, loader, precision: Precision):
    """(targets, output) per batch of `loader`, in evaluation mode, without gradients and
    with fixed randomness (MAE: a fixed mask per batch; SimCLR: views from a fixed seed), so
    that every evaluation of a model gives the same numbers. Targets are on the device."""
    device = precision.device
    gen = torch.Generator(device=device).manual_seed(0)
    cuda_rngs = [device] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=cuda_rngs):
        torch.manual_seed(0)  # SimCLR's evaluation views
        for images, targets in loader:
            images = to_device(images, device)
            targets = targets.to(device, non_blocking=True)
            with precision.autocast():
                out = model.eval_forward(images, gen)
            yield targets, out


def evaluate(model: nn.Module, loader, precision: Precision,
             each_batch=None) -> dict[str, float]:
    """Classifiers: top-1 accuracy (a fraction) and cross-entropy. MAE: its losses on a fixed
    mask per batch; SimCLR: InfoNCE on views drawn from a fixed seed; so runs compare.
    Under torchrun each rank holds a shard of the split and the counts and sums are added
    over the ranks, so the accuracy is the single process's exactly. `each_batch(targets,
    output)`, if given, sees every batch too (mlit.eval's per-class and routing figures)."""
    keys, classifier = model.EVAL_KEYS, hasattr(model, "predictions")
    total, correct = 0, 0
    sums = dict.fromkeys(keys, 0.0)
    for targets, out in eval_batches(model, loader, precision):
        if each_batch is not None:
            each_batch(targets, out)
        n = len(targets)
        for k, v in model.eval_parts(out, targets).items():
            sums[k] += float(v) * n
        if classifier:
            correct += int((model.predictions(out) == targets).sum())
        total += n
    on = precision.device if precision.device.type == "cuda" else "cpu"  # NCCL, or gloo
    summed = sum_over_ranks(torch.tensor([total, correct, *sums.values()], dtype=torch.float64,
                                         device=on)).tolist()
    total, correct, sums = int(summed[0]), int(summed[1]), dict(zip(keys, summed[2:]))
    metrics = {k: v / total for k, v in sums.items()}
    if classifier:
        metrics = {"acc": correct / total, **metrics}
    return metrics


def predict(model: MLiT, loader, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and targets over a loader, on the CPU (for agreement analyses)."""
    preds, targets = [], []
    for y, (logits, _) in eval_batches(model, loader, precision):
        preds.append(logits.argmax(1).cpu())
        targets.append(y.cpu())
    return torch.cat(preds), torch.cat(targets)


@torch.no_grad()
def reconstruction_grid(mae: MaskedAutoEncoder, images: torch.Tensor, mean, std):
    """Rows of (original, masked input, reconstruction with the visible patches pasted back),
    in pixel space, for TensorBoard."""
    with eval_mode(mae):
        out = mae(images, generator=torch.Generator(device=images.device).manual_seed(0))
    p, c = mae.cfg.patch_size, mae.cfg.in_channels
    target = patchify(images, p)
    mask = out.mask.unsqueeze(-1)
    masked = unpatchify(target * (1 - mask), p, c)
    pasted = unpatchify(out.pred.float() * mask + target * (1 - mask), p, c)
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    rows = torch.stack([images, masked, pasted], dim=1).flatten(0, 1)  # (3B, C, H, W)
    return (rows * std + mean).clamp(0, 1)
