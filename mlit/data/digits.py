"""scikit-learn's bundled handwritten digits, the quickstart's dataset: 1,797 images of 8x8
pixels in 16 grey levels, split once and for all (stratified, seed 0) into 1,437 training and
360 test images.

Importing scikit-learn costs more than a second of every run's start (its import chain, not
the digits), so the split is kept in the user's cache after the first run
(`$XDG_CACHE_HOME/mlit`, by default `~/.cache/mlit`), one file per scikit-learn release. The
cache is checked like any dataset on disk (shapes, dtypes, labels; the archive's checksums);
one that fails is made again, and one that cannot be written is skipped: a cache never
stops a run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

SPLIT = {"x_train": (1437, 8, 8), "x_test": (360, 8, 8), "y_train": (1437,), "y_test": (360,)}


def cache_file() -> Path | None:
    """Where this scikit-learn release's split is kept; None without scikit-learn or a home
    folder (the split is then made every time)."""
    try:
        release = importlib.metadata.version("scikit-learn")
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except (importlib.metadata.PackageNotFoundError, RuntimeError):
        return None
    return root / "mlit" / f"digits-split-scikit-learn-{release}.npz"


def split_from_sklearn() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    parts = train_test_split(pixels, digits.target.astype(np.int64), test_size=360,
                             stratify=digits.target, random_state=0)
    return dict(zip(("x_train", "x_test", "y_train", "y_test"), parts))


def read_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The cached split, or None if it is missing or not what split_from_sklearn gives."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            split = {name: archive[name] for name in SPLIT}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    for name, shape in SPLIT.items():
        want = np.uint8 if name.startswith("x") else np.int64
        if split[name].shape != shape or split[name].dtype != want:
            return None
    if not all(np.isin(split[y], range(10)).all() for y in ("y_train", "y_test")):
        return None
    return split


def write_cached(path: Path, split: dict[str, np.ndarray]) -> None:
    """Best effort and atomic: a reader sees the whole file or none."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **split)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def digits_split() -> dict[str, np.ndarray]:
    """The split, from the cache when it holds it, else from scikit-learn (then cached)."""
    path = cache_file()
    split = read_cached(path) if path is not None else None
    if split is None:
        split = split_from_sklearn()
        if path is not None:
            write_cached(path, split)
    return split


class Digits(Dataset):
    """The digits of one side of the split as RGB PIL images."""

    def __init__(self, train: bool = True, transform=None):
        split = digits_split()
        side = "train" if train else "test"
        self.images, self.targets = split[f"x_{side}"], split[f"y_{side}"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])
