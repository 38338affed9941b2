"""One training stage: its model, optimiser, schedule, loaders, checkpoints and logs.

`StageRun` is what `python -m mlit.train` runs for every stage of a recipe, and what the
model zoo and the shape sweep run for each of their models (with the zoo's file layout).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mlit.data.catalogue import dataset_info
from mlit.data.loaders import epoch_seed, eval_loader, train_loader
from mlit.data.transforms import batch_mixing
from mlit.distributed import world
from mlit.files import checkpoint as ckpt
from mlit.files.jsonl import append_jsonl, jsonl_text, read_jsonl, write_jsonl
from mlit.files.weights import load_weights
from mlit.model.dispatch import check_before_compile
from mlit.model.encoder import MLiT, build_head
from mlit.model.registry import module_for
from mlit.recipe.schema import Recipe, Stage
from mlit.training.engine import (
    Precision,
    StepTracker,
    evaluate,
    expert_load,
    reconstruction_grid,
    to_device,
    train_step,
)
from mlit.training.optim import build_optimizer, lr_at, set_lr


def build_stage_model(recipe: Recipe, kind: str, stage: Stage, encoder_init: dict | None):
    """The stage's model. Classifier heads may draw from their own seed, so two runs that
    differ only in `head_seed` start from identical encoders and different heads."""
    extra = {"num_classes": dataset_info(recipe.data).num_classes}
    if stage.head:
        extra["head"] = stage.head
    cfg = recipe.model_settings(**extra)
    ckpt.seed_everything(recipe.train.seed)
    model = module_for(kind, cfg)
    if not isinstance(model, MLiT):
        return model
    if stage.head_seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage.head_seed)
            model.head = build_head(cfg)
    if encoder_init is not None:
        model.encoder.load_state_dict(encoder_init)
    return model


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, the model itself alone. Every expert's weights
    are one stacked tensor, so a rank whose tokens skip an expert still gives that tensor a
    gradient (zero in the expert's slice); only the gate's noise weights go unused, when
    noisy gating is off, and DDP is told so (docs/distributed.md)."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None,
                                   find_unused_parameters=not model.cfg.noisy_gating)


class StageRun:
    """One stage: its model, optimiser, schedule, loaders, checkpoints and logs. The zoo
    places a run's files with `stage_dir` and `metrics_path`."""

    def __init__(self, recipe: Recipe, kind: str, stage: Stage, out: Path,
                 precision: Precision, writer, encoder_init: dict | None = None,
                 stage_dir: Path | None = None, metrics_path: Path | None = None):
        self.recipe, self.kind, self.stage, self.precision = recipe, kind, stage, precision
        self.dir = stage_dir or out / kind
        self.metrics_path = metrics_path or out / "metrics.jsonl"
        self.writer = writer
        self.world = world()  # under torchrun: rank 0 alone writes (save, write_record)
        self.model = build_stage_model(recipe, kind, stage, encoder_init).to(precision.device)
        self.optimizer = build_optimizer(self.model, stage)
        self.scaler = precision.scaler()
        # the training step may run a DDP and compiled copy; checkpoints and evaluation use
        # the module itself
        if recipe.train.compile:
            check_before_compile(self.model.cfg.moe_impl, self.model.cfg.shared,
                                 precision.device, precision.dtype)
        self.step_model = data_parallel(self.model, precision.device)
        if recipe.train.compile:
            self.step_model = torch.compile(self.step_model, mode=recipe.train.compile_mode)
        size, device = self.model.cfg.image_size, precision.device
        classifier = isinstance(self.model, MLiT)
        simclr = kind == "simclr"
        self.train_loader = train_loader(recipe.data, stage.augment, size, stage.batch_size,
                                         device, two_views=simclr)
        self.test_loader = eval_loader(recipe.data, size, stage.batch_size, device,
                                       two_views_aug=stage.augment if simclr else None)
        self.train_eval_loader = (eval_loader(recipe.data, size, stage.batch_size, device,
                                              train=True)
                                  if stage.eval_train and classifier else None)
        self.mixing = (batch_mixing(stage.augment, self.model.cfg.num_classes)
                       if classifier else None)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = stage.epochs * self.steps_per_epoch
        self.warmup_steps = round(stage.warmup_epochs * self.steps_per_epoch)
        self.epoch, self.step, self.result = 0, 0, {}
        self.saved_epoch = 0

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def model_record(self) -> dict:
        """What any file holding this stage's weights carries to rebuild the model alone."""
        info = dataset_info(self.recipe.data)
        return {"model": self.model.state_dict(), "kind": self.kind,
                "model_name": self.recipe.model["name"], "model_config": vars(self.model.cfg),
                "epoch": self.epoch, "class_names": list(info.classes) or None,
                "normalization": {"mean": list(info.mean), "std": list(info.std)}}

    def save(self) -> None:
        if not self.world.writer:
            self.saved_epoch = self.epoch
            return
        state = {**self.model_record(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": self.step,
                 "rng": ckpt.rng_state(), "result": self.result}
        ckpt.save_atomic(state, self.last_path)
        self.saved_epoch = self.epoch

    def save_epoch_checkpoint(self) -> None:
        """The zoo keeps every epoch's weights: checkpoint_0000XY/model.pt."""
        if self.world.writer:
            ckpt.save_atomic(self.model_record(), ckpt.epoch_path(self.dir, self.epoch))

    def last_good(self) -> str:
        """The checkpoint a rerun would resume from, for error messages."""
        if not self.last_path.exists():
            return "none yet"
        return f"{self.last_path} (epoch {self.saved_epoch})"

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; True when the stage had finished."""
        if not self.last_path.exists():
            self.truncate_metrics(after=-1)  # a fresh start: forget any earlier attempt
            return False
        # on the CPU: RNG states must stay CPU tensors; the module and the optimiser copy
        # their tensors to the parameters' device themselves
        state = ckpt.load(self.last_path)
        load_weights(self.model, state.get("model", {}), str(self.last_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.result = state["epoch"], state["step"], state["result"]
        self.saved_epoch = self.epoch
        ckpt.set_rng_state(state["rng"])
        self.truncate_metrics(after=self.epoch)
        return self.epoch >= self.stage.epochs

    def truncate_metrics(self, after: int) -> None:
        """Drop this stage's metric lines of epochs after `after`, written by a run that was
        killed before its next checkpoint."""
        if self.world.writer and self.metrics_path.exists():  # rewritten whole: also drops a partial last line
            keep = [r for r in read_jsonl(self.metrics_path)
                    if not (r.get("stage") == self.kind and r.get("epoch", 0) > after)]
            if jsonl_text(keep) != self.metrics_path.read_text(errors="replace"):
                write_jsonl(self.metrics_path, keep)

    # -- training ---------------------------------------------------------------------------
    def run_epoch(self, bar) -> dict:
        self.model.train()
        seed = epoch_seed(self.recipe.train.seed, self.kind, self.epoch)
        # augmentation, masking, gate noise, dropout: each rank its own draws
        ckpt.seed_everything(seed + 1_000_003 * self.world.rank)
        self.train_loader.generator.manual_seed(seed)  # the global order, worker seeds
        tracker, device = StepTracker(), self.precision.device
        for images, targets in self.train_loader:
            images = to_device(images, device)
            targets = targets.to(device, non_blocking=True)
            if self.mixing is not None:
                images, targets = self.mixing(images, targets)
            lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.stage)
            set_lr(self.optimizer, lr)
            parts = train_step(self.step_model, images, targets, self.optimizer, self.scaler,
                               self.precision, self.stage.clip_grad, self.stage.label_smoothing)
            tracker.add(self.step, parts)
            self.step += 1
            if self.step % self.recipe.train.log_every == 0:
                tracker.check()
                self.log_step(parts, lr)
            bar.update(1)
        tracker.check()
        return {**tracker.means(), "lr": lr}

    def log_step(self, parts: dict, lr: float) -> None:
        for k, v in parts.items():
            self.writer.add_scalar(f"{self.kind}/train_{k}", float(v.detach()), self.step)
        self.writer.add_scalar(f"{self.kind}/lr", lr, self.step)
        for i, load in enumerate(expert_load(self.model)):
            self.writer.add_scalars(f"{self.kind}/expert_load/layer{i:02d}",
                                    {f"expert{e}": float(s) for e, s in enumerate(load)},
                                    self.step)

    def evaluate(self) -> dict:
        metrics = {f"test_{k}": v for k, v in
                   evaluate(self.model, self.test_loader, self.precision).items()}
        if self.train_eval_loader is not None:  # eval mode, no augmentation, no MixUp
            train = evaluate(self.model, self.train_eval_loader, self.precision)
            metrics.update({"train_acc": train["acc"], "train_eval_loss": train["loss"]})
        for k, v in metrics.items():
            self.writer.add_scalar(f"{self.kind}/{k}", v, self.step)
        if self.kind == "pretrain":
            info = dataset_info(self.recipe.data)
            images = next(iter(self.test_loader))[0][:8].to(self.precision.device)
            grid = reconstruction_grid(self.model, images, info.mean, info.std)
            from torchvision.utils import make_grid
            self.writer.add_image(f"{self.kind}/reconstructions", make_grid(grid, nrow=3),
                                  self.step)
        return metrics

    def write_record(self, record: dict) -> None:
        if self.world.writer:
            append_jsonl(self.metrics_path, record)

    def record_start(self) -> None:
        """Epoch 0: the model before any training (zoo)."""
        record = {"stage": self.kind, "epoch": 0, "step": 0, **self.evaluate()}
        self.write_record(record)
        if self.stage.epoch_checkpoints:
            self.save_epoch_checkpoint()

    def run(self) -> dict:
        """Train the remaining epochs; returns the stage's result."""
        if self.resume():
            if self.world.writer:
                print(f"[{self.kind}] complete at epoch {self.epoch}, skipping",
                      file=sys.stderr)
            return {**self.result, "epoch": self.epoch}
        stop_after = self.recipe.train.stop_after_epochs
        last_epoch = min(self.stage.epochs, self.epoch + stop_after if stop_after else 10**9)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.kind, unit="step",
                   disable=not (self.recipe.train.progress and self.world.writer), dynamic_ncols=True, mininterval=2)
        start = time.time()
        if self.epoch == 0 and self.stage.eval_at_start:
            self.record_start()
        with bar:
            while self.epoch < last_epoch:
                train_metrics = self.run_epoch(bar)
                self.epoch += 1
                done = self.epoch == self.stage.epochs
                record = {"stage": self.kind, "epoch": self.epoch, "step": self.step,
                          **{f"train_{k}": v for k, v in train_metrics.items()}}
                if done or self.epoch % self.stage.eval_every == 0:
                    record.update(self.evaluate())
                record["time_s"] = round(time.time() - start, 2)
                self.result = {k: v for k, v in record.items()
                               if k.startswith("test_") or k == "train_acc"} or self.result
                if self.stage.epoch_checkpoints:
                    self.save_epoch_checkpoint()
                self.write_record(record)
                if self.world.writer:
                    bar.write(f"[{self.kind}] epoch {self.epoch}/{self.stage.epochs} "
                              + " ".join(f"{k}={v:.4g}" for k, v in record.items()
                                         if k.startswith(("train_loss", "test_"))
                                         or k == "train_lr"))
                if done or self.epoch % self.stage.checkpoint_every == 0 \
                        or self.epoch == last_epoch:
                    self.save()
        self.writer.flush()
        return {**self.result, "epoch": self.epoch}
