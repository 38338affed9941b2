"""Full-disk scenarios on real small filesystems, for tests/test_faults.py.

    unshare -rm python tests/disk_full_scenarios.py WORKDIR

Runs inside a private mount namespace (unshare -rm), where it may mount tmpfs folders of a
chosen size. Each scenario fills one place a run writes (the stage's checkpoint folder, the
run folder with metrics.jsonl, the TensorBoard folder), runs `mlit.train`'s main, then frees
the space and resumes. Prints one JSON object: exit codes, stderr lines, and whether the final
weights equal those of a run on a disk that never filled.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mlit.train import main

RECIPE = {
    "name": "full", "model": {"name": "mlit_micro"},
    "data": {"dataset": "digits", "num_workers": 0},
    "train": {"progress": False, "log_every": 2, "threads": 1},  # beside another worker
    "supervised": {"epochs": 3, "batch_size": 256, "base_lr": 4e-3, "warmup_epochs": 1,
                   "checkpoint_every": 1},
}


def mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def fill(folder: Path) -> None:
    """Take every free block of the filesystem."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def train(recipe: Path, out: Path, *extra: str) -> dict:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(recipe), f"train.out={out}", *extra])
    return {"code": code, "stderr": err.getvalue().splitlines()}


def weights(out: Path) -> dict:
    return torch.load(out / "supervised" / "checkpoint.pt", weights_only=True)["model"]


def same_weights(out: Path, reference: dict) -> bool:
    got = weights(out)
    return got.keys() == reference.keys() and all(torch.equal(got[k], reference[k])
                                                  for k in got)


def checkpoint_epoch(out: Path) -> int | None:
    path = out / "supervised" / "checkpoint.pt"
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else None


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def main_scenarios(work: Path) -> dict:
    recipe = work / "full.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    results = {}
    assert train(recipe, work / "straight")["code"] == 0
    reference = weights(work / "straight")
    size = (work / "straight" / "supervised" / "checkpoint.pt").stat().st_size

    # 1. the stage folder holds one checkpoint but not a second beside it (atomic writes need
    #    both until the rename): epoch 2's checkpoint cannot be written
    out = work / "ckpt"
    mount(out, "64m")
    mount(out / "supervised", f"{(size * 3 // 2) // 4096 * 4096 + 4096}")
    first = train(recipe, out)
    results["checkpoint"] = {**first, "epoch": checkpoint_epoch(out),
                             "leftovers": leftovers(out), "out": str(out)}
    remount(out / "supervised", "64m")
    results["checkpoint"]["resumed"] = train(recipe, out)
    results["checkpoint"]["identical"] = same_weights(out, reference)

    # 2. the run folder fills up after epoch 1: the next metrics line cannot be written
    out = work / "metrics"
    mount(out, "1m")
    mount(out / "supervised", "64m")
    mount(out / "tb", "64m")
    assert train(recipe, out, "train.stop_after_epochs=1")["code"] == 0
    fill(out)
    second = train(recipe, out, "train.stop_after_epochs=1")  # the same recipe.yaml
    (out / "filler").unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    results["metrics"] = {**second, "epoch": checkpoint_epoch(out), "out": str(out),
                          "metric_epochs": [json.loads(l)["epoch"] for l in lines],
                          "leftovers": leftovers(out)}
    results["metrics"]["resumed"] = train(recipe, out)
    results["metrics"]["identical"] = same_weights(out, reference)

    # 3. TensorBoard's folder is full from the start: its writer thread fails
    out = work / "tb"
    mount(out, "64m")
    mount(out / "tb", "64k")
    fill(out / "tb")
    third = train(recipe, out)
    results["tensorboard"] = {**third, "epoch": checkpoint_epoch(out), "out": str(out)}
    (out / "tb" / "filler").unlink()
    results["tensorboard"]["resumed"] = train(recipe, out)
    results["tensorboard"]["identical"] = same_weights(out, reference)
    return results


if __name__ == "__main__":
    print(json.dumps(main_scenarios(Path(sys.argv[1]))))
