"""Datasets: torchvision's CIFAR-10/100, SVHN and Flowers102 loaders, and scikit-learn's
bundled handwritten digits for a quickstart that needs no download.

torchvision verifies the md5 of the archive it downloads (kept below). Once extracted, our
subclasses only require the files to be present, so a CIFAR folder written by another tool
(or by a test, in the same pickle format) loads through exactly the code a user runs.

What torchvision loads is then checked before any training: image shape and dtype, one label
per image, labels in range. A damaged file is a DatasetInvalid error of one line that names
the file and what is wrong with it (found by reading the files one by one once the loader has
failed, so the common case reads every file once).
"""

from __future__ import annotations

import pickle
import urllib.error
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv


class DatasetError(RuntimeError):
    """A dataset that cannot be used; one line saying what to do."""


class DatasetMissing(DatasetError):
    """The dataset is not on disk; the message says where to put it or how to download it."""


class DatasetInvalid(DatasetError):
    """A dataset file is damaged or holds something else; the message names the file."""


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
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetInvalid(f"{where}: pixels are {kind}, expected uint8 (0-255)")
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
    train_size: int  # images in the training split (the shape sweep plans epochs with it)
    classes: tuple[str, ...] = ()  # class names, where the dataset has them (folders)
    stats: str = "the dataset's published statistics"  # where mean and std come from


INFO = {
    "cifar100": DatasetInfo(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            "cifar-100-python/", 50_000),
    "cifar10": DatasetInfo(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "cifar-10-batches-py/", 50_000),
    "svhn": DatasetInfo(10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        "train_32x32.mat and test_32x32.mat", 73_257),
    "flowers102": DatasetInfo(102, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                              "flowers-102/", 1_020),
    "digits": DatasetInfo(10, (0.3053,) * 3, (0.3760,) * 3, "nothing (bundled)", 1_437),
}


def dataset_info(data) -> DatasetInfo:
    """The recipe's dataset (`data`, a config.Data): classes, normalisation, size. A folder
    dataset is scanned (and checked) here; its mean and std, unless the recipe gives them,
    come from its training split (folder.statistics)."""
    from mlit.data import folder

    if data.dataset == "folder":
        layout = folder.scan(data.root)
        if data.mean is not None:
            mean, std, stats = data.mean, data.std, "data.mean and data.std"
        else:
            mean, std, n = folder.statistics(data.root)
            stats = f"computed from {n} training images"
        return DatasetInfo(max(1, len(layout.classes)), tuple(mean), tuple(std),
                           "train/<class>/<image> and val/<class>/<image>", len(layout.train),
                           layout.classes, stats)
    info = INFO[data.dataset]
    if data.mean is not None:
        info = replace(info, mean=tuple(data.mean), std=tuple(data.std),
                       stats="data.mean and data.std")
    return info


def source_url(name: str, train: bool) -> str:
    """Where torchvision downloads the dataset from."""
    if name in ("cifar10", "cifar100"):
        return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name].url
    if name == "svhn":
        return SVHN.split_list["train" if train else "test"][0]
    return Flowers102._download_url_prefix


def build_dataset(name: str, root: str, train: bool, transform, download: bool = False):
    """The train or test split of a dataset, checked, or a DatasetError with a one-line
    remedy (DatasetMissing: where to put it; DatasetInvalid: which file is damaged)."""
    if name == "digits":
        return Digits(train=train, transform=transform)
    if name == "folder":
        from mlit.data.folder import FolderImages
        return FolderImages(root, train, transform)
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
    except NETWORK_ERRORS as err:
        reason = getattr(err, "reason", None) or err
        raise DatasetMissing(
            f"downloading {name} from {source_url(name, train)} failed ({reason}); without a "
            f"network, put {INFO[name].where} under {Path(root).resolve()} by hand") from None
    except DatasetInvalid:
        raise
    except RuntimeError as err:
        if "not found" not in str(err) and "corrupted" not in str(err):
            raise
        raise DatasetMissing(
            f"{name} not found under {Path(root).resolve()} (expected {INFO[name].where}): "
            f"put it there, or add data.download=true to download it") from None
    raise ValueError(f"data.dataset={name!r}: unknown dataset")
