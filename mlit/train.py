"""Run a recipe: MAE pre-training, then fine-tuning (or supervised training), resumable.

    python -m mlit.train recipes/quickstart.yaml
    python -m mlit.train recipes/mmlit_s.yaml data.download=true train.amp=bf16

Output under `train.out` (default runs/<recipe name>): recipe.yaml (resolved), one folder per
stage with checkpoint.pt (the last, written atomically), metrics.jsonl (one line per epoch),
tb/ (TensorBoard) and summary.json. Running the same command again resumes; one process at a
time writes a run folder (a second one exits with the holder's PID).

Exit status (mlit/cli.py): 0 done; 1 a fault at run time (a non-finite loss, a full disk),
with the last good checkpoint named; 2 bad input (recipe, dataset, checkpoint, busy folder),
before any work; 130 / 143 interrupted by SIGINT / SIGTERM, with where it stopped and the
checkpoint the same command resumes from.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

from mlit import distributed, modelfile
from mlit.cli import Interrupted, run_command
from mlit.config import (STAGE_ORDER, Recipe, RecipeError, Stage, build_recipe,
                         changed_fields, load_recipe, parse_yaml, recipe_to_yaml)
from mlit.engine import NonFiniteLoss, select_device, select_precision
from mlit.data.datasets import DatasetInvalid, dataset_info
from mlit.data.folder import checked_layout
from mlit.files import DamagedFile, DiskFull, remove_orphans, write_json, write_text_atomic
from mlit.lock import FolderLock
from mlit.stage import StageRun
from mlit.tensorboard import TensorBoard


def output_dir(recipe: Recipe) -> Path:
    return Path(recipe.train.out or Path("runs") / recipe.name)


# -- the run folder -----------------------------------------------------------------------
DATA_STATS = "data_stats.json"  # a folder dataset's classes and normalisation
RUN_FILES = ("metrics.jsonl", "summary.json", DATA_STATS)


def saved_recipe(path: Path) -> Recipe:
    """The recipe.yaml an earlier run of this folder wrote."""
    try:
        return build_recipe(parse_yaml(path.read_text(), str(path)))
    except (RecipeError, OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path} cannot be read back ({err}): add train.resume=false to "
                          "start over there, or choose another train.out") from None


def clear_run(out: Path) -> None:
    """train.resume=false: forget the earlier run, its checkpoints and logs."""
    for kind in STAGE_ORDER:
        shutil.rmtree(out / kind, ignore_errors=True)
    shutil.rmtree(out / "tb", ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def prepare_run_folder(out: Path, recipe: Recipe) -> None:
    """Under the folder's lock: drop what killed writes left, then either start over
    (train.resume=false), or check that the checkpoints there belong to this recipe."""
    remove_orphans(out)
    recipe_path = out / "recipe.yaml"
    if not recipe.train.resume:
        clear_run(out)
    elif recipe_path.exists() and any(out.glob("*/checkpoint.pt")):
        changes = changed_fields(saved_recipe(recipe_path), recipe)
        if changes:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:5])
            more = f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
            raise RecipeError(
                f"{out} holds checkpoints of another recipe ({listed}{more}): add "
                "train.resume=false to start over there, or choose another train.out")
    text = recipe_to_yaml(recipe)
    if not recipe_path.exists() or recipe_path.read_text(errors="replace") != text:
        write_text_atomic(recipe_path, text)


def pretrained_encoder(recipe: Recipe, out: Path, stage: Stage) -> dict:
    """The encoder a fine-tune starts from: finetune.init, or this run's pre-training."""
    source = stage.init or out / recipe.pretraining_stage() / "checkpoint.pt"
    key = "finetune.init" if stage.init else f"the {recipe.pretraining_stage()} checkpoint"
    return modelfile.encoder_for(source, recipe.model_settings(), recipe.model["name"], key)


def settle_data(recipe: Recipe, out: Path) -> Recipe:
    """A folder dataset's classes and normalisation, fixed for the whole run: rank 0 reads
    them from data_stats.json (a resumed run) or works them out (dataset_info) and writes
    it; every rank then uses rank 0's. A classifying stage on unlabeled images stops here."""
    data = recipe.data
    if data.dataset != "folder":
        return recipe

    def stats() -> dict:
        checked_layout(data.root)  # the layout, before anything is computed or written
        path = out / DATA_STATS
        if data.mean is None and path.is_file():
            found = read_json_object(path)
            source = f"{path} ({found.get('source', 'an earlier start')})"
        else:
            info = dataset_info(data)
            found = {"classes": list(info.classes), "mean": list(info.mean),
                     "std": list(info.std), "source": info.stats,
                     "train_images": info.train_size}
            write_json(path, found)
            source = info.stats
        print(f"data: {data.root}: {found['train_images']} training images, "
              f"{len(found['classes']) or 'no'} classes; normalisation {source}",
              file=sys.stderr)
        return found

    found = distributed.on_rank0(stats)
    classifier = [k for k, _ in recipe.stages() if k in ("finetune", "supervised")]
    if classifier and not found["classes"]:
        raise DatasetInvalid(f"{data.root}/train: images without class folders serve MAE or "
                             f"SimCLR pre-training only; the {classifier[0]} stage needs "
                             "train/<class>/<image>")
    update = {"mean": tuple(found["mean"]), "std": tuple(found["std"])}
    return recipe.model_copy(update={"data": data.model_copy(update=update)})


def read_json_object(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFile(f"{path} cannot be read back ({err}); delete it to compute the "
                          "statistics again") from None
    if not isinstance(found, dict) or not {"classes", "mean", "std"} <= set(found):
        raise DamagedFile(f"{path}: not the statistics mlit.train writes; delete it to "
                          "compute them again")
    return found


def run(recipe: Recipe) -> dict:
    """Every stage of the recipe in order; returns (and writes) the summary. Under torchrun
    every rank trains and rank 0 alone holds the folder and writes (docs/distributed.md)."""
    w = distributed.init(recipe.train.device)
    out = output_dir(recipe)
    lock = (FolderLock(out, advice="wait for it to finish, or choose another train.out")
            if w.writer else contextlib.nullcontext())
    with lock:
        try:
            distributed.on_rank0(lambda: prepare_run_folder(out, recipe))
            recipe = settle_data(recipe, out)
            return run_stages(recipe, out)
        except (DiskFull, Interrupted) as err:
            if not err.last_good:  # failed outside a stage: name the newest checkpoint
                saved = [out / k / "checkpoint.pt" for k in STAGE_ORDER]
                err.last_good = next((str(p) for p in reversed(saved) if p.exists()),
                                     "none yet" if isinstance(err, DiskFull) else "")
            raise


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
            if kind == "finetune":
                encoder_init = pretrained_encoder(recipe, out, stage)
            stage_run = StageRun(recipe, kind, stage, out, precision, writer, encoder_init)
            try:
                result = stage_run.run()
            except NonFiniteLoss as err:
                err.where = f"stage {kind}; last good checkpoint: {stage_run.last_good()}"
                raise
            except DiskFull as err:
                err.last_good = stage_run.last_good()
                raise
            except Interrupted as err:  # Ctrl-C or SIGTERM: say where, and what resumes
                err.where = f"in stage {kind} at epoch {stage_run.epoch + 1} of {stage.epochs}"
                if stage_run.last_path.exists():
                    err.last_good = stage_run.last_good()
                else:
                    err.resume = ("no checkpoint of this stage yet: run the same command "
                                  "again to start it over")
                raise
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2

    def body() -> int:
        summary = run(load_recipe(argv[0], argv[1:]))
        if distributed.world().writer:
            print(json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        return 0
    try:
        return run_command("mlit.train", body)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
