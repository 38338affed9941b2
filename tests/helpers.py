"""Small recipes and data files for the tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlit.data.synthetic import write_cifar100  # noqa: F401 (the tests' generator)
from mlit.recipe.schema import build_recipe

# each test's runs take this process's share of the cores (tests/conftest.py: one under
# pytest-xdist's two workers on two cores): a run on two threads beside another worker's
# took 2.5x its time on one
THREADS = torch.get_num_threads()


def tiny_recipe(out, stages: dict, model_name="mlit_micro", **sections):
    tree = {"name": "test", "model": {"name": model_name},
            "data": {"dataset": "digits", "num_workers": 0},
            "train": {"out": str(out), "progress": False, "log_every": 2, "threads": THREADS},
            **stages}
    for key, value in sections.items():
        tree[key].update(value) if isinstance(tree.get(key), dict) else tree.update({key: value})
    return build_recipe(tree)


# the overrides that make any recipe a fast CPU run of mLiT-micro
TINY = ["model.name=mlit_micro", "train.progress=false", f"train.threads={THREADS}",
        "data.num_workers=0"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# -- preemption (tests/test_preemption.py, tests/test_launcher.py) -----------------------------
AUGMENT = {"crop_scale": [0.5, 1.0], "hflip": True, "rotation": 10, "random_erasing": 0.25}
PREEMPT = {
    "name": "preempt",
    "model": {"name": "mlit_micro"},
    "data": {"dataset": "digits", "num_workers": 0},
    "pretrain": {"epochs": 2, "batch_size": 64, "base_lr": 1e-3, "warmup_epochs": 1,
                 "augment": AUGMENT, "eval_every": 1},
    "finetune": {"epochs": 2, "batch_size": 64, "base_lr": 1e-3, "warmup_epochs": 1,
                 "augment": {**AUGMENT, "mixup": 0.8, "cutmix": 1.0}, "eval_every": 1},
    "train": {"progress": False, "log_every": 4, "threads": THREADS},
}
STEPS = 1437 // 64  # digits' training split, per epoch


def checkpoint(out: Path, kind: str) -> dict:
    return torch.load(out / kind / "checkpoint.pt", weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same weights in both stages; the same metrics but for the last bits of a
    resumed epoch's running loss."""
    for kind in ("pretrain", "finetune"):
        x, y = checkpoint(a, kind), checkpoint(b, kind)
        assert x["step"] == y["step"] == 2 * STEPS
        for name, tensor in x["model"].items():
            assert torch.equal(tensor, y["model"][name]), (kind, name)
    for x, y in zip(*((o / "metrics.jsonl").read_text().splitlines() for o in (a, b)),
                    strict=True):
        x, y = json.loads(x), json.loads(y)
        assert x.keys() == y.keys()
        for k in x.keys() - {"time_s"}:
            assert_close_record(x[k], y[k], k)


def assert_close_record(x, y, where) -> None:
    """A record's value: floats within the last bits (rel 1e-6), everything else (strings,
    integers, booleans, None) exactly, lists and dicts element by element."""
    if isinstance(x, float) or isinstance(y, float):
        assert isinstance(x, (int, float)) and isinstance(y, (int, float)), (where, x, y)
        assert x == pytest.approx(y, rel=1e-6), where
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            assert_close_record(a, b, f"{where}[{i}]")
    elif isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            assert_close_record(x[key], y[key], f"{where}.{key}")
    else:
        assert type(x) is type(y) and x == y, (where, x, y)


def wait_for(predicate, proc: subprocess.Popen, what: str, limit: float = 300) -> None:
    deadline = time.time() + limit
    while not predicate():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.time() < deadline, what
        time.sleep(0.05)


TOOLS = Path(__file__).parents[1] / "tools"


def tool(name: str):
    """tools/<name>.py as a module, imported from its file as `python tools/<name>.py` runs it
    (its siblings importable by name)."""
    import importlib.util

    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


def tool_main(name: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`python tools/<name>.py ARGS` in this process, up to where it stops (its checks of its
    flags and folders): the exit status, returned or argparse's SystemExit, stdout and stderr.
    sys.argv[0] is the tool's path, as in its own process, so argparse names the program."""
    monkeypatch.setattr(sys, "argv", [str(TOOLS / f"{name}.py"), *args])
    capsys.readouterr()
    try:
        status = tool(name).main(list(args))
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err
