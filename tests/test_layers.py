"""The package's import layers (pyproject.toml's import-linter contracts, tools/check_layers.py):
kept by this checkout, and broken, with a report that names the import, by each kind of
back-edge planted in a copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def check(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py"), "--tree",
                           str(tree)], capture_output=True, text=True, timeout=120)


def test_this_checkout_keeps_every_contract():
    done = check(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def planted(tmp_path: Path, file: str, line: str) -> Path:
    tree = tmp_path / "tree"
    for name in ("mlit", "kernels", "tools"):
        shutil.copytree(ROOT / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    target = tree / file
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    return tree


@pytest.mark.parametrize("file, line, report", [
    # the model reaching up into the runner
    ("mlit/model/attention.py", "from mlit.training import engine",
     "mlit.model.attention -> mlit.training.engine"),
    # one command importing another
    ("mlit/eval.py", "from mlit.train import main", "mlit.eval -> mlit.train"),
    # the kernels importing the model that calls them
    ("kernels/moe.py", "from mlit.model import dispatch", "mlit.kernels.moe -> mlit.model.dispatch"),
    # a circle inside one layer
    ("mlit/files/atomic.py", "from mlit.files import jsonl", "No cycles are allowed in mlit.files"),
])
def test_a_planted_back_edge_fails_naming_it(tmp_path, file, line, report):
    done = check(planted(tmp_path, file, line))
    assert done.returncode == 1
    assert report in done.stdout, done.stdout


def test_the_package_never_imports_a_tool(tmp_path):
    done = check(planted(tmp_path, "mlit/cli.py", "import gpu_check_common"))
    assert done.returncode == 1
    assert "check_layers: mlit/cli.py imports tools (gpu_check_common)" in done.stderr


RUN_TIME = """
import importlib, pkgutil, sys, tomllib
layers = tomllib.load(open({pyproject!r}, "rb"))["tool"]["importlinter"]["contracts"][0]["layers"]
allowed = {{"mlit"}}
for layer in reversed(layers):  # the lowest first: each import may bring what is below it
    names = [n.strip(" ()") for n in layer.split("|")]
    for name in names:
        allowed.add("mlit." + name)
    for name in names:
        module = importlib.import_module("mlit." + name)
        for sub in pkgutil.walk_packages(getattr(module, "__path__", []), module.__name__ + "."):
            importlib.import_module(sub.name)
        above = sorted(m for m in sys.modules if m.startswith("mlit")
                       and ".".join(m.split(".")[:2]) not in allowed)
        assert not above, f"import mlit.{{name}} (and its modules) imported {{above}}"
print(len([m for m in sys.modules if m.startswith("mlit")]))
"""


def test_importing_a_layer_runs_no_layer_above_it():
    """The contracts hold at run time too: mlit/__init__.py imports no layer, so `import
    mlit.model` (or any module of a layer) brings that layer and those below it alone."""
    done = subprocess.run([sys.executable, "-c", RUN_TIME.format(
        pyproject=str(ROOT / "pyproject.toml"))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 80  # every module of mlit was imported
