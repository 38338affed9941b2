"""Your own images (`data.dataset: folder`), in torchvision's ImageFolder layout:

    data.root/train/<class>/<image>     the training split, a folder per class
    data.root/val/<class>/<image>       the evaluation split (or test/)
    data.root/train/<image>             unlabeled: MAE pre-training only

ImageNet-1k has this layout once its validation images are sorted into class folders.
Every image (any size; grey, RGBA, palette) becomes RGB; the stage's augmentation brings it
to model.image_size. The classes are the folder names, sorted; `val/` may lack a class of
`train/` but not have one `train/` lacks. The layout is checked before any work (`scan`): a
missing train/, an empty class folder, a folder without images are one line each. A file that
cannot be decoded is found when it is read: one warning line names it, the image is skipped
(the next image of the split stands in), and once more than MAX_UNREADABLE files of a run's
split fail, the run stops naming the count (docs/datasets.md).
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from mlit.data.errors import DatasetInvalid, DatasetMissing
from mlit.data.images import open_rgb
from mlit.errors import first_line

MAX_UNREADABLE = 10  # per split and process group: more means a damaged copy, not a stray file
EVAL_FOLDERS = ("val", "test")


@functools.cache
def image_endings() -> tuple[str, ...]:
    """The file endings ImageFolder reads (torchvision's list, imported when a folder is read:
    torchvision takes a second to import, which a command that reads no folder never pays)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in image_endings() and not hidden(path.name)


def hidden(name: str) -> bool:
    """.ipynb_checkpoints/, .DS_Store, ._photo.jpg (macOS): never a class, never an image."""
    return name.startswith(".")


def images_below(folder: Path) -> list[Path]:
    """Every image file under `folder`, at any depth, outside hidden folders; sorted."""
    return sorted(p for p in folder.rglob("*") if is_image(p)
                  and not any(hidden(part) for part in p.relative_to(folder).parts))


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not hidden(p.name))


def loose_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p))


@dataclass(frozen=True)
class Layout:
    root: Path
    classes: tuple[str, ...]  # empty: an unlabeled training folder
    train: tuple[tuple[Path, int], ...]
    test: tuple[tuple[Path, int], ...] | None  # None: no val/ or test/ folder

    @property
    def labeled(self) -> bool:
        return bool(self.classes)


def invalid(message: str):

    return (DatasetMissing if "no such folder" in message else DatasetInvalid)(message)


def class_samples(folder: Path, names, classes: tuple[str, ...]) -> tuple[tuple[Path, int], ...]:
    """(image, label) of the class folders `names` under `folder`; labels index `classes`."""
    samples = []
    for name in names:
        label = classes.index(name)
        files = images_below(folder / name)
        if not files and (folder / name).is_dir():
            raise invalid(f"{folder / name}: an empty class folder (no image files with "
                          f"the endings {', '.join(image_endings()[:4])}, ...)")
        samples += [(p, label) for p in files]
    return tuple(samples)


@functools.lru_cache(maxsize=8)
def scan(root: str) -> Layout:
    """The folder dataset under `root`, checked; DatasetError naming the path if not."""
    root_path = Path(root)
    train = root_path / "train"
    if not train.is_dir():
        raise invalid(f"{train}: no such folder; data.dataset=folder reads "
                      "train/<class>/<image> and val/<class>/<image> (or test/) under "
                      "data.root")
    classes = tuple(class_folders(train))
    if classes:
        train_samples = class_samples(train, classes, classes)
        loose = loose_images(train)
        if loose:  # once per process: scan is cached
            print(f"warning: {train}: {len(loose)} images lie directly in train/ beside its "
                  f"class folders (e.g. {loose[0].name}) and are not used; move them into a "
                  "class folder", file=sys.stderr)
    else:
        train_samples = tuple((p, -1) for p in loose_images(train))
        if not train_samples:
            raise invalid(f"{train}: no images and no class folders")
    test_samples = None
    for name in EVAL_FOLDERS:
        folder = root_path / name
        if not folder.is_dir():
            continue
        found = class_folders(folder)
        if classes:
            extra = [c for c in found if c not in classes]
            if extra:
                raise invalid(f"{folder / extra[0]}: a class that {train} does not have")
            if not found and loose_images(folder):
                raise invalid(f"{folder}: its images lie directly in {name}/; a labeled "
                              f"dataset needs {name}/<class>/<image>, as train/ has")
            test_samples = class_samples(folder, found, classes)
        else:
            test_samples = tuple((p, -1) for p in images_below(folder))
        if not test_samples:
            raise invalid(f"{folder}: no images")
        break
    return Layout(root_path, classes, train_samples, test_samples)


def no_eval_split(root) -> Exception:
    return invalid(f"{Path(root) / 'val'}: no such folder (nor test/): the evaluation split "
                   "goes there, a folder per class as in train/")


def checked_layout(root: str) -> Layout:
    """scan(), and an evaluation split is there (every stage evaluates on it)."""
    layout = scan(root)
    if layout.test is None:
        raise no_eval_split(root)
    return layout


@functools.lru_cache(maxsize=16)
def bad_flags(root: str, train: bool, n: int):
    return multiprocessing.Array("b", n)


class FolderImages(Dataset):
    """One split of a folder dataset as (RGB PIL image through `transform`, label); a file
    that does not decode is skipped, once warned about, and counted (check_unreadable)."""

    def __init__(self, root: str, train: bool, transform=None):
        layout = scan(str(root))
        samples = layout.train if train else layout.test
        if samples is None:
            raise no_eval_split(root)
        self.root, self.train, self.samples = Path(root), train, list(samples)
        self.classes = list(layout.classes)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        # one flag per image, shared by every dataset of this split in the process and by
        # DataLoader workers: each bad file is warned about and counted once
        self.bad = bad_flags(str(root), train, len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        for offset in range(len(self.samples)):
            j = (i + offset) % len(self.samples)
            if self.bad[j]:
                continue
            path, label = self.samples[j]
            try:
                image = open_rgb(path)
            except Exception as err:  # any failure to decode is this image's problem
                self.skipped(j, err)
                continue
            return (self.transform(image) if self.transform else image), label
        raise invalid(f"{self.root}: not one image of the split can be decoded")

    def skipped(self, j: int, err: Exception) -> None:
        with self.bad.get_lock():
            first = not self.bad[j]
            self.bad[j] = 1
        if first:
            print(f"warning: skipped {self.samples[j][0]}: cannot be decoded "
                  f"({type(err).__name__}: {first_line(err)}); another image stands in for it",
                  file=sys.stderr)

    @property
    def unreadable(self) -> int:
        return sum(self.bad[:])

    def check_unreadable(self) -> None:
        """Stop the run once more than MAX_UNREADABLE files of the split failed."""
        count = self.unreadable
        if count > MAX_UNREADABLE:
            raise invalid(f"{self.root}: {count} images of the "
                          f"{'training' if self.train else 'evaluation'} split cannot be "
                          f"decoded (more than {MAX_UNREADABLE}); the warnings above name "
                          "them: replace or remove them")


class CheckedLoader:
    """A DataLoader over FolderImages that stops, in the main process, once too many files
    failed to decode (workers count into a shared value). len(), iteration and `generator`
    as the DataLoader's."""

    def __init__(self, loader, dataset: FolderImages):
        self.loader, self.dataset = loader, dataset
        self.generator = loader.generator

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.dataset.check_unreadable()
            yield batch
        self.dataset.check_unreadable()


STATS_IMAGES = 1000  # images, evenly spaced over the training split, for mean and std


@functools.lru_cache(maxsize=8)
def statistics(root: str) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std of the training images (each resized to 64 x 64), from up to
    STATS_IMAGES of them: (mean, std, images used)."""
    import torch
    from torchvision.transforms import v2

    dataset = FolderImages(root, train=True, transform=v2.Compose([
        v2.Resize((64, 64), antialias=True), v2.PILToTensor()]))
    step = max(1, len(dataset) // STATS_IMAGES)
    picks = range(0, len(dataset), step)[:STATS_IMAGES]
    pixels = torch.stack([dataset[i][0] for i in picks]).double() / 255  # (n, 3, 64, 64)
    dataset.check_unreadable()
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp(min=1e-3)
    decoded = len(picks) - sum(dataset.bad[i] for i in picks)  # stand-ins are not counted
    return (tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std),
            decoded)
