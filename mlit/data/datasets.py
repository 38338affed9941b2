"""Datasets: torchvision's CIFAR-10/100, SVHN and Flowers102 loaders (scikit-learn's bundled
digits, the quickstart's, are mlit/data/digits.py).

torchvision verifies the md5 of the archive it downloads (kept below). Once extracted, our
subclasses only require the files to be present, so a CIFAR folder written by another tool
(or by a test, in the same pickle format) loads through exactly the code a user runs. Which
dataset a recipe names, and what it is, is mlit/data/catalogue.py.

What torchvision loads is then checked before any training: image shape and dtype, one label
per image, labels in range. A damaged file is a DatasetInvalid error of one line that names
the file and what is wrong with it (found by reading the files one by one once the loader has
failed, so the common case reads every file once).
"""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
from torchvision import datasets as tv

from mlit.data.errors import DatasetInvalid


def presence_only(file_list):
    return [[name, None] for name, _md5 in file_list]


def check_labels(labels, n_images: int, num_classes: int, where) -> None:
    labels = np.asarray(labels)
    if len(labels) != n_images:
        raise DatasetInvalid(f"{where}: {len(labels)} labels for {n_images} images")
    if n_images and (not np.issubdtype(labels.dtype, np.integer)
                     or labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetInvalid(f"{where}: labels must be integers in 0..{num_classes - 1} (found "
                             f"{labels.min()}..{labels.max()} of type {labels.dtype})")


def check_images(data: np.ndarray, shape: tuple, where) -> None:
    """uint8 pixels, each image of `shape` (after torchvision's own reshaping)."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetInvalid(f"{where}: pixels are {found}, expected uint8 (0-255)")
    if data.shape[1:] != shape:
        raise DatasetInvalid(f"{where}: images of shape {data.shape[1:]}, expected {shape}")


class CheckedDataset:
    """torchvision's loading, then `check()`; a load that fails for another reason than
    missing files is a DatasetInvalid with `unreadable()`'s message."""

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except Exception as err:
            if missing_files(err):
                raise  # build_dataset says where to put them
            raise DatasetInvalid(self.unreadable()) from None
        self.check()

    def unreadable(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError


class ValidatedCIFAR(CheckedDataset):
    """A failure is traced to the file causing it, by reading the files one by one."""
    label_key: str
    num_classes: int

    def unreadable(self) -> str:
        self.diagnose()  # raises, naming the file, if one of them is at fault
        return f"{self.folder}: the CIFAR files cannot be read"

    def check(self) -> None:
        try:
            check_images(self.data, (32, 32, 3), self.folder)
            check_labels(self.targets, len(self.data), self.num_classes, self.folder)
        except DatasetInvalid:
            self.diagnose()  # names the file
            raise

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.base_folder

    def diagnose(self) -> None:
        """Read each file of the split, and the meta file, on their own: the first one that
        is not what torchvision expects is a DatasetInvalid naming it."""
        for name, _ in self.train_list if self.train else self.test_list:
            self.check_batch(self.folder / name)
        meta = self.folder / self.meta["filename"]
        entry = read_pickle(meta)
        if not isinstance(entry, dict) or self.meta["key"] not in entry:
            raise DatasetInvalid(f"{meta}: not a CIFAR meta file (no {self.meta['key']!r})")

    def check_batch(self, path: Path) -> None:
        entry = read_pickle(path)
        if not isinstance(entry, dict) or "data" not in entry:
            raise DatasetInvalid(f"{path}: not a CIFAR batch (no 'data' array)")
        data = entry["data"]
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
            shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
            raise DatasetInvalid(f"{path}: 'data' is {shape}, expected rows of 3072 values "
                                 "(3 x 32 x 32 images)")
        check_images(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), (32, 32, 3), path)
        if self.label_key not in entry:
            raise DatasetInvalid(f"{path}: not a CIFAR batch (no {self.label_key!r})")
        check_labels(entry[self.label_key], len(data), self.num_classes, path)


NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError)


def missing_files(err: Exception) -> bool:
    """Errors build_dataset turns into DatasetMissing: torchvision's integrity check saying
    the files are not there, or a download that failed."""
    return isinstance(err, NETWORK_ERRORS) or (isinstance(err, RuntimeError)
                                               and "not found" in str(err))


def read_pickle(path: Path):
    if path.stat().st_size == 0:
        raise DatasetInvalid(f"{path}: empty file")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception:
        raise DatasetInvalid(f"{path}: not a readable pickle (truncated, or another "
                             "format)") from None


class CIFAR10(ValidatedCIFAR, tv.CIFAR10):
    train_list = presence_only(tv.CIFAR10.train_list)
    test_list = presence_only(tv.CIFAR10.test_list)
    meta = {**tv.CIFAR10.meta, "md5": None}
    label_key, num_classes = "labels", 10


class CIFAR100(ValidatedCIFAR, tv.CIFAR100):
    train_list = presence_only(tv.CIFAR100.train_list)
    test_list = presence_only(tv.CIFAR100.test_list)
    meta = {**tv.CIFAR100.meta, "md5": None}
    label_key, num_classes = "fine_labels", 100


class SVHN(CheckedDataset, tv.SVHN):
    split_list = {k: [url, name, None] for k, (url, name, _md5) in tv.SVHN.split_list.items()}

    def unreadable(self) -> str:
        return f"{Path(self.root) / self.filename}: not a readable SVHN .mat file"

    def check(self) -> None:
        where = Path(self.root) / self.filename
        check_images(self.data, (3, 32, 32), where)
        check_labels(self.labels, len(self.data), 10, where)


class Flowers102(CheckedDataset, tv.Flowers102):
    _file_dict = {k: (name, md5 if k == "image" else None)
                  for k, (name, md5) in tv.Flowers102._file_dict.items()}

    def unreadable(self) -> str:
        return (f"{self._base_folder}: the label files (imagelabels.mat, setid.mat) cannot "
                "be read")

    def check(self) -> None:
        check_labels(self._labels, len(self._image_files), 102, self._base_folder)
        missing = [p for p in self._image_files if not p.is_file()]
        if missing:
            raise DatasetInvalid(f"{missing[0]}: missing ({len(missing)} images of the split "
                                 "are)")
