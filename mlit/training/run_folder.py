"""The run folder of `mlit.train` (docs/training.md): what it holds and the rules for using
it again.

    train.out/                    (default runs/<recipe name>)
      recipe.yaml                 the resolved recipe; a rerun resumes only with the same one
      <stage>/checkpoint.pt       per stage: the last checkpoint, written atomically
      metrics.jsonl, summary.json one line per epoch; the result
      data_stats.json             a folder dataset's classes and normalisation
      tb/                         TensorBoard

`prepare_run_folder` runs under the folder's lock (mlit/files/lock.py): it drops what killed
writes left, then starts over (train.resume=false) or checks that the checkpoints there belong
to this recipe (mlit/training/resume.py).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mlit import distributed
from mlit.data.catalogue import dataset_info
from mlit.data.errors import DatasetInvalid
from mlit.data.folder import checked_layout
from mlit.files import modelfile
from mlit.files.atomic import remove_orphans, write_json, write_text_atomic
from mlit.files.records import read_data_stats
from mlit.model.stage_kinds import STAGE_KINDS, STAGE_ORDER
from mlit.recipe.reading import RecipeError, parse_yaml
from mlit.recipe.schema import Recipe, Stage, build_recipe, recipe_to_yaml
from mlit.training.resume import changed_fields

DATA_STATS = "data_stats.json"  # a folder dataset's classes and normalisation
RUN_FILES = ("metrics.jsonl", "summary.json", DATA_STATS)


def output_dir(recipe: Recipe) -> Path:
    return Path(recipe.train.out or Path("runs") / recipe.name)


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
    check_resumable(out, recipe)
    text = recipe_to_yaml(recipe)
    if not recipe_path.exists() or recipe_path.read_text(errors="replace") != text:
        write_text_atomic(recipe_path, text)


def newest_checkpoint(out: Path) -> Path | None:
    """The checkpoint of the latest stage that has one: what a rerun resumes from."""
    saved = [out / kind / "checkpoint.pt" for kind in STAGE_ORDER]
    return next((p for p in reversed(saved) if p.exists()), None)


def check_resumable(out: Path, recipe: Recipe) -> None:
    """The checkpoints in `out`, if any, belong to this recipe (or it starts over)."""
    recipe_path = out / "recipe.yaml"
    if not recipe.train.resume or not recipe_path.exists() \
            or not any(out.glob("*/checkpoint.pt")):
        return
    changes = changed_fields(saved_recipe(recipe_path), recipe)
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:5])
        more = f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
        raise RecipeError(
            f"{out} holds checkpoints of another recipe ({listed}{more}): add "
            "train.resume=false to start over there, or choose another train.out")


def pretrained_encoder(recipe: Recipe, out: Path, stage: Stage, kind: str = "finetune"
                       ) -> dict | None:
    """The encoder a fine-tune or a probe starts from: its init, or this run's pre-training;
    None for linprobe.init=random (the encoder as initialised)."""
    if stage.init == "random":
        if not STAGE_KINDS[kind].frozen_encoder:
            raise RecipeError(f"{kind}.init=random: only linprobe probes an untrained encoder")
        return None
    source = stage.init or out / recipe.pretraining_stage() / "checkpoint.pt"
    key = f"{kind}.init" if stage.init else f"the {recipe.pretraining_stage()} checkpoint"
    return modelfile.encoder_for(source, recipe.model_settings(), recipe.model["name"], key)


def settle_data(recipe: Recipe, out: Path) -> Recipe:
    """A folder dataset's classes and normalisation, fixed for the whole run: rank 0 reads
    them from data_stats.json (a resumed run) or works them out (dataset_info) and writes
    it; every rank then uses rank 0's. A run with checkpoints never trains on another class
    mapping than theirs; a classifying stage on unlabeled images, or on one class, stops."""
    data = recipe.data
    if data.dataset != "folder":
        return recipe

    def stats() -> dict:
        layout = checked_layout(data.root)  # the layout, before anything is computed
        path = out / DATA_STATS
        earlier = read_data_stats(path) if path.is_file() else None
        if earlier is not None and any(out.glob("*/checkpoint.pt")):
            check_same_classes(earlier["classes"], layout.classes, data.root, path)
        if data.mean is None and earlier is not None and \
                earlier["classes"] == list(layout.classes):
            found, source = earlier, f"{path} ({earlier['source']})"
        else:
            info = dataset_info(data)
            found = {"classes": list(info.classes), "mean": list(info.mean),
                     "std": list(info.std), "source": info.stats,
                     "train_images": info.train_size}
            write_json(path, found)
            source = info.stats
        now = len(layout.train)
        then = f" ({found['train_images']} when its statistics were computed)" \
            if found["train_images"] != now else ""
        print(f"data: {data.root}: {now} training images{then}, "
              f"{len(found['classes']) or 'no'} classes; normalisation {source}",
              file=sys.stderr)
        return found

    found = distributed.on_rank0(stats)
    check_classes(recipe, found["classes"])
    update = {"mean": tuple(found["mean"]), "std": tuple(found["std"])}
    return recipe.model_copy(update={"data": data.model_copy(update=update)})


def check_classes(recipe: Recipe, classes) -> None:
    """A folder dataset's classes serve the recipe's stages: a classifier needs two or more."""
    root = recipe.data.root
    classifier = [k for k, _ in recipe.stages() if STAGE_KINDS[k].classifier]
    if classifier and not classes:
        raise DatasetInvalid(f"{root}/train: images without class folders serve MAE or "
                             f"SimCLR pre-training only; the {classifier[0]} stage needs "
                             "train/<class>/<image>")
    if classifier and len(classes) == 1:
        raise DatasetInvalid(f"{root}/train: one class folder ({classes[0]}); the "
                             f"{classifier[0]} stage needs at least two classes (a one-class "
                             "classifier is always right)")


def check_same_classes(then: list[str], now: tuple[str, ...], root: str, stats: Path) -> None:
    """The class folders of train/ are those the run's checkpoints were trained on."""
    if list(now) == then:
        return
    added, removed = sorted(set(now) - set(then)), sorted(set(then) - set(now))
    change = "; ".join(part for part in (
        f"new: {', '.join(added)}" if added else "",
        f"gone: {', '.join(removed)}" if removed else "") if part)
    raise DatasetInvalid(f"{root}/train: its class folders changed since this run's "
                         f"checkpoints ({change}; {stats} lists {len(then)}); training on "
                         "would change what each label means: restore them, or start over "
                         "with train.resume=false or another train.out")
