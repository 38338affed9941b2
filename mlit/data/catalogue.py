"""The datasets a recipe can name (`data.dataset`): what each is (classes, normalisation,
size, what must be under data.root) and how its splits are built, checked, with a one-line
remedy when one is missing (where to put it, or how to download it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mlit.data import folder
from mlit.data.errors import DatasetInvalid, DatasetMissing


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
    from mlit.data.datasets import CIFAR10, CIFAR100, SVHN, Flowers102

    if name in ("cifar10", "cifar100"):
        return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name].url
    if name == "svhn":
        return SVHN.split_list["train" if train else "test"][0]
    return Flowers102._download_url_prefix


def build_dataset(name: str, root: str, train: bool, transform, download: bool = False):
    """The train or test split of a dataset, checked, or a DatasetError with a one-line
    remedy (DatasetMissing: where to put it; DatasetInvalid: which file is damaged). The
    loaders (torchvision's, a second to import) are imported here, when a split is built."""
    if name == "digits":
        from mlit.data.digits import Digits

        return Digits(train=train, transform=transform)
    if name == "folder":
        return folder.FolderImages(root, train, transform)
    from mlit.data.datasets import CIFAR10, CIFAR100, NETWORK_ERRORS, SVHN, Flowers102

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
    raise DatasetInvalid(f"data.dataset={name!r}: unknown dataset")
