"""One training stage: its model, optimiser, schedule, loaders, checkpoints and logs.

`StageRun` is what `python -m mlit.train` runs for every stage of a recipe, and what the
model zoo and the shape sweep run for each of their models (with the zoo's file layout).
A stage can stop after any optimiser step (a signal, mlit/training/preemption.py) and resume
there: a checkpoint holds the step, and inside an epoch the epoch's running loss sums; every
draw of a step is keyed by the step (mlit/data/seeds.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mlit.data.catalogue import dataset_info
from mlit.data.loaders import eval_loader, train_loader
from mlit.data.seeds import epoch_seed, seed_everything, step_seed
from mlit.data.transforms import batch_mixing
from mlit.distributed import world
from mlit.errors import Interrupted, context
from mlit.files.weights import load_weights
from mlit.model.dispatch import check_before_compile
from mlit.model.stage_kinds import STAGE_KINDS
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
from mlit.training.knn import KnnMonitor
from mlit.training.optim import build_optimizer, lr_at, set_lr
from mlit.training.preemption import Preemption
from mlit.training.schedule import due
from mlit.training.stage_files import StageFiles
from mlit.training.stage_model import build_stage_model, data_parallel


class StageRun:
    """One stage: its model, optimiser, schedule, loaders, checkpoints and logs. The zoo
    places a run's files with `stage_dir` and `metrics_path`."""

    def __init__(self, recipe: Recipe, kind: str, stage: Stage, out: Path,
                 precision: Precision, writer, encoder_init: dict | None = None,
                 stage_dir: Path | None = None, metrics_path: Path | None = None):
        self.recipe, self.kind, self.stage, self.precision = recipe, kind, stage, precision
        self.writer = writer
        self.world = world()  # under torchrun: rank 0 alone writes (its files, the log)
        self.files = StageFiles(kind, stage_dir or out / kind,
                                metrics_path or out / "metrics.jsonl", self.world.writer)
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
        classifier = STAGE_KINDS[kind].classifier
        two_views = STAGE_KINDS[kind].views == 2  # SimCLR's pairs
        self.train_loader = train_loader(recipe.data, stage.augment, size, stage.batch_size,
                                         device, two_views=two_views)
        self.test_loader = eval_loader(recipe.data, size, stage.batch_size, device,
                                       two_views_aug=stage.augment if two_views else None)
        self.train_eval_loader = (eval_loader(recipe.data, size, stage.batch_size, device,
                                              train=True)
                                  if stage.eval_train and classifier else None)
        self.mixing = (batch_mixing(stage.augment, self.model.cfg.num_classes)
                       if classifier else None)
        labelled = dataset_info(recipe.data).num_classes > 1  # a folder of loose images: no
        self.knn = KnnMonitor(kind, recipe.data, stage, self.model, precision) \
            if STAGE_KINDS[kind].pretrains and stage.knn_every and labelled else None
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = stage.epochs * self.steps_per_epoch
        self.warmup_steps = round(stage.warmup_epochs * self.steps_per_epoch)
        self.epoch, self.step, self.result = 0, 0, {}  # epochs done, optimiser steps done
        self.resumed_tracker: StepTracker | None = None  # an epoch resumed mid-way
        self.preemption = Preemption(recipe.train.checkpoint_minutes)

    # -- checkpoints (the files themselves: StageFiles) --------------------------------------
    def model_record(self) -> dict:
        """What any file holding this stage's weights carries to rebuild the model alone."""
        info = dataset_info(self.recipe.data)
        return {"model": self.model.state_dict(), "kind": self.kind,
                "model_name": self.recipe.model["name"], "model_config": vars(self.model.cfg),
                "epoch": self.epoch, "class_names": list(info.classes) or None,
                "normalization": {"mean": list(info.mean), "std": list(info.std)}}

    def epoch_steps_done(self) -> int:
        """Optimiser steps of the current epoch already taken (0 at an epoch's start)."""
        return self.step - self.epoch * self.steps_per_epoch

    def save(self, tracker: StepTracker | None = None) -> None:
        """The stage's checkpoint at this step; inside an epoch, with the epoch's running
        sums (`tracker`, gathered from every rank, so every rank calls save)."""
        progress = tracker.progress() if tracker is not None and self.epoch_steps_done() \
            else None
        self.files.save(lambda: {**self.model_record(), "optimizer": self.optimizer.state_dict(),
                                 "scaler": self.scaler.state_dict(), "step": self.step,
                                 "epoch_progress": progress, "result": self.result},
                        self.epoch, self.step)
        self.preemption.saved()

    def last_good(self) -> str:
        return self.files.last_good(self.steps_per_epoch)

    def position(self) -> str:
        """Where the stage is, for the line of a stopped run: in an epoch, or at the end of
        the last one done (its record and checkpoint are written there)."""
        at = f"in stage {self.kind} at step {self.step} of {self.total_steps}"
        if self.epoch and not self.epoch_steps_done():
            return f"{at} (end of epoch {self.epoch} of {self.stage.epochs})"
        return f"{at} (epoch {self.epoch + 1} of {self.stage.epochs})"

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; True when the stage had finished."""
        state = self.files.load()
        if state is None:
            return False
        # read on the CPU: RNG states must stay CPU tensors; the module and the optimiser
        # copy their tensors to the parameters' device themselves
        load_weights(self.model, state.get("model", {}), str(self.files.checkpoint))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.result = state["epoch"], state["step"], state["result"]
        if state.get("epoch_progress") is not None:
            self.resumed_tracker = StepTracker.resumed(state["epoch_progress"],
                                                       self.precision.device)
        return self.epoch >= self.stage.epochs

    # -- training ---------------------------------------------------------------------------
    def run_epoch(self, bar) -> dict:
        """The epoch's remaining steps (all of them, unless it resumes mid-way)."""
        self.model.train()
        rank, seed = self.world.rank, self.recipe.train.seed
        first = self.epoch_steps_done()
        tracker = self.resumed_tracker if first and self.resumed_tracker else StepTracker()
        self.resumed_tracker = None
        batches = self.train_loader.epoch(epoch_seed(seed, self.kind, self.epoch), first)
        # what the step draws (the device pipeline's colour ops, MixUp, masks, gate noise,
        # dropout) from (seed, step, rank): a resumed step draws what an unbroken one does
        seed_everything(step_seed(seed, self.kind, self.step, rank))
        try:
            for images, targets in batches:
                self.train_one(images, targets, tracker, bar)
                self.stop_point(tracker)
                seed_everything(step_seed(seed, self.kind, self.step, rank))
        finally:
            batches.close()  # a stop mid-epoch ends the loader's workers now
        tracker.check()
        lr = lr_at(max(self.step - 1, 0), self.total_steps, self.warmup_steps, self.stage)
        return {**tracker.means(), "lr": lr}

    def train_one(self, images, targets, tracker: StepTracker, bar) -> None:
        """One optimiser step at the schedule's learning rate."""
        device = self.precision.device
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

    def stop_point(self, tracker: StepTracker | None = None) -> None:
        """After a step or an epoch: what every rank agreed on (Preemption.check). A recovery
        checkpoint, or on a signal a checkpoint of this step, and Interrupted."""
        signum, due = self.preemption.check()
        if not (signum or due):
            return
        if tracker is not None:
            tracker.check()  # never a checkpoint of a step whose loss was not finite
        self.save(tracker)
        if signum:
            raise Interrupted(signum)  # run()'s context says where, and the checkpoint

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

    def record_start(self) -> None:
        """Epoch 0: the model before any training (zoo)."""
        record = {"stage": self.kind, "epoch": 0, "step": 0, **self.evaluate()}
        self.files.record(record)
        if self.stage.epoch_checkpoints:
            self.files.save_epoch(self.model_record, self.epoch)

    def run(self) -> dict:
        """Train the remaining epochs; returns the stage's result. An error that stops the
        run (a signal, a full disk, a non-finite loss) says where and its last checkpoint."""
        with context(where=self.position, last_good=self.last_good):
            if self.resume():
                if self.world.writer:
                    print(f"[{self.kind}] complete at epoch {self.epoch}, skipping",
                          file=sys.stderr)
                return {**self.result, "epoch": self.epoch}
            stop_after = self.recipe.train.stop_after_epochs
            last_epoch = min(self.stage.epochs, self.epoch + stop_after if stop_after else 10**9)
            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.kind, unit="step",
                       disable=not (self.recipe.train.progress and self.world.writer),
                       dynamic_ncols=True, mininterval=2)
            start = time.time()
            if self.step == 0 and self.stage.eval_at_start:
                self.record_start()
            with bar, self.preemption.deferred():
                while self.epoch < last_epoch:
                    train_metrics = self.run_epoch(bar)
                    self.epoch += 1
                    now = due(self.stage, self.epoch, last_epoch, knn=self.knn is not None)
                    self.end_epoch(now, train_metrics, time.time() - start, bar)
            self.writer.flush()
            return {**self.result, "epoch": self.epoch}

    def end_epoch(self, now, train_metrics: dict, seconds: float, bar) -> None:
        """What the schedule says is due after an epoch (`now`): its record, with the
        evaluation and the k-NN monitor, the epoch's checkpoints, and the stop point."""
        record = {"stage": self.kind, "epoch": self.epoch, "step": self.step,
                  **{f"train_{k}": v for k, v in train_metrics.items()}}
        if now.evaluate:
            record.update(self.evaluate())
        if now.knn:
            record.update(self.knn.measure(self.writer, self.step))
        record["time_s"] = round(seconds, 2)
        self.result = {k: v for k, v in record.items()
                       if k.startswith("test_") or k == "train_acc"} or self.result
        if now.epoch_checkpoint:
            self.files.save_epoch(self.model_record, self.epoch)
        self.files.record(record)
        if self.world.writer:
            bar.write(f"[{self.kind}] epoch {self.epoch}/{self.stage.epochs} "
                      + " ".join(f"{k}={v:.4g}" for k, v in record.items()
                                 if k.startswith(("train_loss", "test_")) or k == "train_lr"))
        if now.checkpoint:
            self.save()
        if not now.done:
            self.stop_point()
