"""Train a population's runs (a zoo's, a shape sweep's) through the runner's own StageRun:
what is complete is skipped, what was interrupted resumes from its last checkpoint, and each run's
files follow the population layout (mlit/population/layout.py).

A model folder is trained by one process at a time (mlit/files/lock.py): a runner that finds a
folder locked by another one (another shard, a second launch on a shared filesystem) skips
that model as `busy` and goes on with the rest."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from mlit.errors import Interrupted, context
from mlit.files import modelfile
from mlit.files.atomic import remove_orphans, write_json, write_text_atomic
from mlit.files.lock import FolderBusy, FolderLock
from mlit.files.tensorboard import TensorBoard
from mlit.model.stage_kinds import STAGE_KINDS
from mlit.population import layout
from mlit.population.plan import PlannedRun
from mlit.recipe.schema import recipe_to_yaml
from mlit.training.engine import select_device, select_precision
from mlit.training.stage import StageRun


def write_config(model_dir: Path, run: PlannedRun, model_config) -> None:
    """config.json: the run's factors, the model as built, and every training setting."""
    recipe = run.recipe
    write_json(model_dir / "config.json", {
        "name": run.name, "path": run.path, "stage": run.kind, "backbone": run.backbone,
        "factors": run.factors, "model": {**vars(model_config), "name": recipe.model["name"]},
        "recipe": recipe.model_dump(mode="json", exclude_none=True)})
    write_text_atomic(model_dir / "recipe.yaml", recipe_to_yaml(recipe))


def run_one(zoo_dir: str | Path, run: PlannedRun) -> str:
    """Train (or finish) one zoo model; returns its final state: done, failed,
    interrupted, or busy (another process holds the folder)."""
    model_dir = Path(zoo_dir) / run.path
    if layout.status(model_dir) == "done":
        return "done"
    try:
        with FolderLock(model_dir):
            if layout.status(model_dir) == "done":  # finished by another runner meanwhile
                return "done"
            return train_locked(model_dir, run)
    except FolderBusy:
        return "busy"


def train_locked(model_dir: Path, run: PlannedRun) -> str:
    remove_orphans(model_dir)
    layout.set_status(model_dir, "running")
    recipe = run.recipe
    stage = getattr(recipe, run.kind)
    try:
        precision = select_precision(select_device(recipe.train.device), recipe.train.amp)
        encoder_init = None
        if STAGE_KINDS[run.kind].from_pretraining:
            encoder_init = modelfile.encoder_for(stage.init, recipe.model_settings(),
                                                 recipe.model["name"], "backbone")
        writer = TensorBoard(model_dir / "tb")
        try:
            stage_run = StageRun(recipe, run.kind, stage, model_dir, precision, writer,
                                 encoder_init, stage_dir=model_dir,
                                 metrics_path=model_dir / "result.json")
            write_config(model_dir, run, stage_run.model.cfg)
            result = stage_run.run()
        finally:
            writer.close(quiet=sys.exc_info()[0] is not None)
    except Interrupted:  # Ctrl-C or SIGTERM: resumable, not failed
        layout.set_status(model_dir, "interrupted")
        raise
    except Exception as err:  # recorded for `zoo status`; the other runs go on
        layout.set_status(model_dir, "failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc(limit=5))
        print(f"[zoo] {run.path}: failed: {err}", file=sys.stderr)
        return "failed"
    if result.get("epoch", 0) < stage.epochs:  # train.stop_after_epochs ended it early
        layout.set_status(model_dir, "interrupted", epoch=result.get("epoch"))
        return "interrupted"
    layout.set_status(model_dir, "done", result=result)
    return "done"


def runnable(zoo_dir: Path, run: PlannedRun) -> bool:
    """A fine-tune can start once its backbone is done."""
    return run.backbone is None or layout.status(zoo_dir / run.backbone) == "done"


def run_local(zoo_dir: str | Path, runs: list[PlannedRun]) -> dict[str, list[str]]:
    """Runs one after the other, pre-trainings first. Fine-tunes whose backbone is not done
    (another shard's) are reported as waiting."""
    zoo_dir = Path(zoo_dir)
    outcome: dict[str, list[str]] = {}
    for i, run in enumerate(sorted(runs, key=lambda r: r.backbone is not None)):
        if not runnable(zoo_dir, run):
            state = "waiting"
        else:
            before = layout.status(zoo_dir / run.path)
            with context(where=f"while training {run.path} (model {i + 1} of {len(runs)})",
                         resume="finished models are kept and this one resumes from its last "
                                "checkpoint: run the same command again"):
                state = run_one(zoo_dir, run)
            if before == "done":
                state = "skipped"
        outcome.setdefault(state, []).append(run.path)
        print(json.dumps({"run": run.path, "state": state}), flush=True)
    return outcome
