"""Small datasets written in a real on-disk format, for the tests and `tools/gpu_check.py`.

They are read by exactly the loaders a user runs (mlit/data/datasets.py), so a run on them
goes through the same code as a run on the real files. `learnable=True` gives every class a
pattern of its own under the noise, so that an MAE's and a classifier's loss can fall.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def class_images(rng: np.random.Generator, labels: np.ndarray, learnable: bool) -> np.ndarray:
    """(n, 3, 32, 32) uint8: noise, or per class a smooth 4x4 colour pattern plus noise."""
    n = len(labels)
    if not learnable:
        return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    patterns = rng.uniform(40, 215, size=(100, 3, 4, 4))
    smooth = patterns[labels].repeat(8, axis=2).repeat(8, axis=3)
    noisy = smooth + rng.normal(0, 25, size=smooth.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def write_cifar100(root: Path, n_train=64, n_test=32, seed=0, learnable=False,
                   classes=100) -> dict:
    """A CIFAR-100 in the real on-disk format: cifar-100-python/{train,test,meta}, pickled
    dicts of uint8 rows (3072 = 3 x 32 x 32, channel-major) and fine labels, drawn from the
    first `classes` classes. Returns {split: (data, fine_labels)}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, classes, size=n)
        data = class_images(rng, fine, learnable).reshape(n, 3072)
        arrays[split] = (data, fine.tolist())
        # Python 2 pickles, as the real files are: str keys, protocol 2
        batch = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                 "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                 "data": data}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": [f"class{i}" for i in range(100)],
            "coarse_label_names": [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return arrays
