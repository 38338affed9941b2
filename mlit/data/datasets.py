"""Datasets: torchvision's CIFAR-10/100, SVHN and Flowers102 loaders, and scikit-learn's
bundled handwritten digits for a quickstart that needs no download.

torchvision verifies the md5 of the archive it downloads (kept below). Once extracted, our
subclasses only require the files to be present, so a CIFAR folder written by another tool
(or by a test, in the same pickle format) loads through exactly the code a user runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv


class DatasetMissing(RuntimeError):
    """The dataset is not on disk; the message says where to put it or how to download it."""


def presence_only(file_list):
    return [[name, None] for name, _md5 in file_list]


class CIFAR10(tv.CIFAR10):
    train_list = presence_only(tv.CIFAR10.train_list)
    test_list = presence_only(tv.CIFAR10.test_list)
    meta = {**tv.CIFAR10.meta, "md5": None}


class CIFAR100(tv.CIFAR100):
    train_list = presence_only(tv.CIFAR100.train_list)
    test_list = presence_only(tv.CIFAR100.test_list)
    meta = {**tv.CIFAR100.meta, "md5": None}


class SVHN(tv.SVHN):
    split_list = {k: [url, name, None] for k, (url, name, _md5) in tv.SVHN.split_list.items()}


class Flowers102(tv.Flowers102):
    _file_dict = {k: (name, md5 if k == "image" else None)
                  for k, (name, md5) in tv.Flowers102._file_dict.items()}


class Digits(Dataset):
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as RGB PIL images.
    A fixed stratified split: 1,437 train / 360 test."""

    def __init__(self, train: bool = True, transform=None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
        x_tr, x_te, y_tr, y_te = train_test_split(pixels, digits.target, test_size=360,
                                                  stratify=digits.target, random_state=0)
        self.images, self.targets = (x_tr, y_tr) if train else (x_te, y_te)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    where: str  # what must be under data.root


INFO = {
    "cifar100": DatasetInfo(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            "cifar-100-python/"),
    "cifar10": DatasetInfo(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "cifar-10-batches-py/"),
    "svhn": DatasetInfo(10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        "train_32x32.mat and test_32x32.mat"),
    "flowers102": DatasetInfo(102, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                              "flowers-102/"),
    "digits": DatasetInfo(10, (0.3053,) * 3, (0.3760,) * 3, "nothing (bundled)"),
}


def build_dataset(name: str, root: str, train: bool, transform, download: bool = False):
    """The train or test split of a dataset, or DatasetMissing with a one-line remedy."""
    if name == "digits":
        return Digits(train=train, transform=transform)
    kw = dict(root=root, transform=transform, download=download)
    try:
        if name == "cifar100":
            return CIFAR100(train=train, **kw)
        if name == "cifar10":
            return CIFAR10(train=train, **kw)
        if name == "svhn":
            return SVHN(split="train" if train else "test", **kw)
        if name == "flowers102":
            # the paper does not say which splits: we train on `train`, test on `test`
            return Flowers102(split="train" if train else "test", **kw)
    except RuntimeError as err:
        if "not found" not in str(err) and "corrupted" not in str(err):
            raise
        raise DatasetMissing(
            f"{name} not found under {Path(root).resolve()} (expected {INFO[name].where}): "
            f"put it there, or add data.download=true to download it") from None
    raise ValueError(f"data.dataset={name!r}: unknown dataset")
