"""Running a whole recipe: every stage in order in one run folder, under its lock, resumable
(what `python -m mlit.train` does). Under torchrun every rank trains and rank 0 alone holds
the folder and writes (docs/distributed.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mlit import distributed
from mlit.errors import NO_CHECKPOINT, context
from mlit.files.atomic import write_json
from mlit.files.lock import FolderLock
from mlit.files.tensorboard import TensorBoard
from mlit.model.stage_kinds import STAGE_KINDS
from mlit.recipe.schema import Recipe
from mlit.training.engine import select_device, select_precision
from mlit.training.prechecks import BUSY_ADVICE, check_inputs, writable_run_folder
from mlit.training.run_folder import (
    newest_checkpoint,
    output_dir,
    prepare_run_folder,
    pretrained_encoder,
    settle_data,
)
from mlit.training.stage import StageRun


def run(recipe: Recipe) -> dict:
    """Every stage of the recipe in order; returns (and writes) the summary. Under torchrun
    every rank trains and rank 0 alone holds the folder and writes (docs/distributed.md)."""
    with distributed.collective_errors():
        w = distributed.init()
        distributed.agreed(lambda: check_inputs(recipe, w.size))
        out = output_dir(recipe)
        lock = FolderLock(out, advice=BUSY_ADVICE)
        def hold_folder() -> None:  # writable, then locked; nothing to broadcast
            writable_run_folder(recipe)
            lock.acquire()

        # through on_rank0: a bad or busy folder is rank 0's one line, and the other ranks
        # stop with it instead of waiting for a peer that is gone
        distributed.on_rank0(hold_folder)
        try:  # stopped outside a stage, a run names the newest checkpoint of any
            with context(last_good=lambda: str(newest_checkpoint(out) or NO_CHECKPOINT)):
                distributed.on_rank0(lambda: prepare_run_folder(out, recipe))
                return run_stages(settle_data(recipe, out), out)
        finally:
            lock.release()


def run_stages(recipe: Recipe, out: Path) -> dict:
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    w = distributed.world()
    device = distributed.device_of(select_device(recipe.train.device))
    precision = select_precision(device, recipe.train.amp)
    summary: dict = {"recipe": recipe.name, "device": str(precision.device),
                     "dtype": str(precision.dtype).removeprefix("torch."), "stages": {}}
    encoder_init = None
    writer = TensorBoard(out / "tb", enabled=w.writer)
    try:
        for kind, stage in recipe.stages():
            if STAGE_KINDS[kind].from_pretraining:
                encoder_init = pretrained_encoder(recipe, out, stage, kind)
            stage_run = StageRun(recipe, kind, stage, out, precision, writer, encoder_init)
            result = stage_run.run()
            distributed.barrier()  # rank 0's last checkpoint is written: the next stage reads it
            summary["stages"][kind] = result
            if result.get("epoch", 0) < stage.epochs:  # stopped early by stop_after_epochs
                summary["incomplete"] = kind
                break
    finally:
        writer.close(quiet=sys.exc_info()[0] is not None)
    last = summary["stages"][next(reversed(summary["stages"]))]
    summary.update({k: v for k, v in last.items() if k.startswith("test_")})
    if w.writer:
        write_json(out / "summary.json", summary)
    return summary
