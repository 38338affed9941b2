"""Small recipes and data files for the tests."""

from __future__ import annotations

from mlit.data.synthetic import write_cifar100  # noqa: F401 (the tests' generator)
from mlit.recipe.schema import build_recipe


def tiny_recipe(out, stages: dict, model_name="mlit_micro", **sections):
    tree = {"name": "test", "model": {"name": model_name},
            "data": {"dataset": "digits", "num_workers": 0},
            "train": {"out": str(out), "progress": False, "log_every": 2, "threads": 2},
            **stages}
    for key, value in sections.items():
        tree[key].update(value) if isinstance(tree.get(key), dict) else tree.update({key: value})
    return build_recipe(tree)


# the overrides that make any recipe a fast CPU run of mLiT-micro
TINY = ["model.name=mlit_micro", "train.progress=false", "train.threads=2",
        "data.num_workers=0"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()
