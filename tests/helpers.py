"""Small recipes and data files for the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from mlit.config import build_recipe


def tiny_recipe(out, stages: dict, model_name="mlit_micro", **sections):
    tree = {"name": "test", "model": {"name": model_name},
            "data": {"dataset": "digits", "num_workers": 0},
            "train": {"out": str(out), "progress": False, "log_every": 2, "threads": 2},
            **stages}
    for key, value in sections.items():
        tree[key].update(value) if isinstance(tree.get(key), dict) else tree.update({key: value})
    return build_recipe(tree)


def write_cifar100(root: Path, n_train=64, n_test=32, seed=0) -> dict:
    """A small CIFAR-100 in the real on-disk format: cifar-100-python/{train,test,meta},
    pickled dicts of uint8 rows (3072 = 3 x 32 x 32, channel-major) and fine labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        arrays[split] = (data, fine)
        # Python 2 pickles, as the real files are: str keys, protocol 2
        batch = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                 "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": data}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": [f"class{i}" for i in range(100)],
            "coarse_label_names": [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return arrays
