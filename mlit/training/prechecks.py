"""What a run checks of its input before any work: the same checks on every rank (through
`distributed.agreed`, so one cause is one line) and, once, in `mlit.train --nproc-per-node`'s
launcher before any worker starts. Each failure is a one-line BadInput (exit 2) naming the
field or file: a global batch that does not divide among the processes or exceeds the
training split, a dataset that is missing or malformed, a `finetune.init` that does not fit,
a run folder that holds checkpoints of another recipe, or one another process holds.
"""

from __future__ import annotations

from pathlib import Path

from mlit.data.catalogue import build_dataset
from mlit.data.folder import checked_layout
from mlit.files.lock import FolderLock
from mlit.files.paths import output_folder
from mlit.model.stage_kinds import STAGE_KINDS
from mlit.recipe.reading import RecipeError
from mlit.recipe.schema import Recipe
from mlit.training.run_folder import (
    check_classes,
    check_resumable,
    output_dir,
    pretrained_encoder,
)

BUSY_ADVICE = "wait for it to finish, or choose another train.out"


def check_inputs(recipe: Recipe, processes: int) -> None:
    """Batches, datasets and a fine-tune's init: everything but the run folder."""
    for kind, stage in recipe.stages():
        if stage.batch_size % processes:
            raise RecipeError(f"{kind}.batch_size={stage.batch_size}: the global batch must "
                              f"divide among the {processes} processes of this run")
    data = recipe.data
    if data.dataset == "folder":
        check_classes(recipe, list(checked_layout(data.root).classes))
    train = build_dataset(data.dataset, data.root, True, None, data.download)
    build_dataset(data.dataset, data.root, False, None, data.download)
    for kind, stage in recipe.stages():
        if stage.batch_size > len(train):
            raise RecipeError(f"{kind}.batch_size={stage.batch_size} exceeds the {len(train)} "
                              f"training images of {data.dataset}")
        if STAGE_KINDS[kind].from_pretraining and stage.init:
            pretrained_encoder(recipe, output_dir(recipe), stage, kind)


def writable_run_folder(recipe: Recipe) -> Path:
    """The run folder, created, or one line naming train.out where it cannot be written."""
    return output_folder(output_dir(recipe), "train.out")


def check_run_folder(recipe: Recipe) -> Path:
    """The run folder can be written and is free (no other process holds its lock) and, if
    it holds checkpoints, they are of this recipe; nothing in it changes."""
    out = writable_run_folder(recipe)
    FolderLock(out, advice=BUSY_ADVICE).acquire().release()
    check_resumable(out, recipe)
    return out
