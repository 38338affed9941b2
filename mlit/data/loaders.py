"""Loaders for the runner. Two pipelines with one interface: len() and `epoch(seed, start)`,
the batches of one epoch from batch `start` on, a function of (seed, batch) alone, so that a
run resumed mid-epoch sees exactly the batches an unbroken one would (docs/training.md):

- torchvision: a DataLoader over PIL images with torchvision.transforms.v2 in workers; each
  image's augmentation draws from its own seed, keyed by (epoch seed, image), so they do not
  depend on which worker, how many workers or which rank transforms it (`KeyedDraws`);
- device: the split as uint8 on the training device, augmented in batches (data/device.py),
  each batch's draws keyed by (epoch seed, batch, rank).

`data.pipeline: auto` picks device on CUDA and torchvision elsewhere.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import signal
import sys

import torch
from torch.utils.data import DataLoader, Sampler, Subset
from torchvision.transforms import v2

from mlit.data.catalogue import build_dataset, dataset_info
from mlit.data.device import DeviceLoader, dataset_to_ragged, dataset_to_uint8, decode, has_arrays
from mlit.data.folder import CheckedLoader, scan
from mlit.data.seeds import derived_seed
from mlit.data.transforms import TwoViews, eval_transform, train_transform
from mlit.distributed import World, world
from mlit.recipe.reading import RecipeError
from mlit.recipe.schema import Augment, Data


class GlobalOrderSampler(Sampler[tuple[int, int]]):
    """One order of the training split per epoch (from the epoch's seed), the same on every
    rank; of each global batch of `global_batch` images, rank r takes every world-th from the
    r-th (docs/distributed.md). With one process it is a plain shuffle that drops the last
    partial batch. Yields (image, its augmentation seed) from global batch `start` on."""

    def __init__(self, n: int, global_batch: int, world: World):
        self.n, self.global_batch, self.world = n, global_batch, world
        self.seed, self.start = 0, 0

    def set_epoch(self, seed: int, start: int = 0) -> None:
        self.seed, self.start = seed, start

    def __len__(self) -> int:
        return (self.n // self.global_batch - self.start) * self.global_batch // self.world.size

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        usable = order[self.start * self.global_batch: self.n // self.global_batch
                       * self.global_batch]
        for i in usable[self.world.rank::self.world.size].tolist():
            yield i, derived_seed(self.seed, i)


class KeyedDraws(torch.utils.data.Dataset):
    """A dataset indexed by (image, seed): the image's transform draws from that seed alone,
    in a worker or in the main process (whose own generator it leaves untouched)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU's, which transforms draw from
            return self.dataset[index]


class EpochLoader:
    """The torchvision pipeline's training batches: `epoch(seed, start)` as DeviceLoader's.
    A folder dataset's batches stop, in the main process, once too many files failed to
    decode (FolderImages.check_unreadable)."""

    def __init__(self, loader: DataLoader, sampler: GlobalOrderSampler, folder=None):
        self.loader, self.sampler, self.folder = loader, sampler, folder
        self.batches = len(loader)

    def __len__(self) -> int:
        return self.batches

    def epoch(self, seed: int, start: int = 0):
        self.sampler.set_epoch(seed, start)
        self.loader.generator.manual_seed(seed)  # worker seeds: nothing random is left there
        batches = iter(self.loader)
        try:
            for batch in batches:
                if self.folder is not None:
                    self.folder.check_unreadable()
                yield batch
            if self.folder is not None:
                self.folder.check_unreadable()
        finally:  # stopped mid-epoch (a signal, an error): the workers go now, not at exit
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def quiet_worker(worker_id: int) -> None:
    """A DataLoader worker leaves SIGINT and SIGTERM to its main process, which finishes the
    step, writes its checkpoint and shuts the workers down (a Ctrl-C reaches the whole
    process group; a scheduler may signal every process of a job)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@atexit.register
def _kill_leftover_workers() -> None:
    # multiprocessing ends daemonic children at exit with SIGTERM, which quiet_worker's
    # ignore; a loader left mid-iteration by an error would keep its workers: kill them
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def shard(n: int, w: World) -> range:
    """This rank's contiguous part of an evaluation split: unpadded, every image once."""
    return range(w.rank * n // w.size, (w.rank + 1) * n // w.size)


def use_device_pipeline(data: Data, device: torch.device, image_size: int = 0) -> bool:
    if data.pipeline != "auto" or device.type != "cuda":
        return data.pipeline == "device"
    if data.dataset != "folder":
        return True
    return folder_fits(data.root, stored_size(data, image_size), data.num_workers, device,
                       image_size)


def stored_size(data: Data, image_size: int) -> int:
    return data.stored_size or 2 * image_size


@functools.lru_cache(maxsize=8)
def folder_fits(root: str, side: int, workers: int, device: torch.device,
                image_size: int) -> bool:
    """Whether a folder dataset at its stored size takes at most half the GPU's free memory
    (the device pipeline), or not (the torchvision DataLoader); says which, once."""

    layout = scan(root)
    need = 3 * (len(layout.train) * side**2 + len(layout.test or ()) * image_size**2)
    free = torch.cuda.mem_get_info(device)[0]
    fits = need <= free / 2
    where = (f"the device pipeline at {side}x{side} ({need / 2**30:.1f} GiB on the GPU)" if fits
             else f"the torchvision DataLoader with {workers} workers (at "
                  f"{side}x{side} it would take {need / 2**30:.1f} GiB of the GPU's free "
                  f"{free / 2**30:.1f} GiB)")
    print(f"data: {root}: {len(layout.train)} training images: {where}", file=sys.stderr)
    return fits


@functools.lru_cache(maxsize=8)
def device_split(name: str, root: str, train: bool, size: int, download: bool,
                 device: torch.device, stored: int = 0):
    """A split decoded once per process (the zoo trains many runs on the same data): one
    uint8 tensor, or for a training split of large images of many sizes (Flowers102) a list
    of the images at full resolution, so random crops keep their detail; a folder dataset's
    training split at stored x stored (its shorter side resized, then the centre)."""
    dataset = build_dataset(name, root, train, None, download)
    if train and name == "folder":
        images, labels = decode(dataset, v2.Compose([
            v2.Resize(stored, antialias=True), v2.CenterCrop(stored), v2.PILToTensor()]))
        dataset.check_unreadable()
        return torch.stack(images).to(device), labels.to(device)
    if train and not has_arrays(dataset):
        images, labels = dataset_to_ragged(dataset)
        return [image.to(device) for image in images], labels.to(device)
    images, labels = dataset_to_uint8(dataset, size)
    if name == "folder":
        dataset.check_unreadable()
    return images.to(device), labels.to(device)


def train_loader(data: Data, aug: Augment, image_size: int, batch_size: int,
                 device: torch.device, two_views: bool = False):
    """Batches of this rank's share (batch_size / world) of each global batch."""
    info, w = dataset_info(data), world()
    if batch_size % w.size:
        raise RecipeError(f"batch_size={batch_size}: the global batch must divide among the "
                          f"{w.size} processes of this run")
    if use_device_pipeline(data, device, image_size):
        images, labels = device_split(data.dataset, data.root, True, image_size, data.download,
                                      device, stored_size(data, image_size))
        loader = DeviceLoader(images, labels, batch_size, image_size, info.mean, info.std,
                              aug, two_views=two_views, world=w)
        n = len(images)
    else:
        transform = train_transform(aug, image_size, info.mean, info.std)
        dataset = build_dataset(data.dataset, data.root, True,
                                TwoViews(transform) if two_views else transform, data.download)
        sampler = GlobalOrderSampler(len(dataset), batch_size, w)
        batches = DataLoader(KeyedDraws(dataset), batch_size=batch_size // w.size,
                             drop_last=True, sampler=sampler, num_workers=data.num_workers,
                             pin_memory=device.type == "cuda", generator=torch.Generator(),
                             worker_init_fn=quiet_worker)
        n = len(dataset)
        loader = EpochLoader(batches, sampler, dataset if data.dataset == "folder" else None)
    if n < batch_size:
        raise RecipeError(f"batch_size={batch_size} exceeds the {n} training images "
                          f"of {data.dataset}")
    return loader


def eval_loader(data: Data, image_size: int, batch_size: int, device: torch.device,
                train: bool = False, two_views_aug: Augment | None = None):
    """The test split (or, with train=True, the training split) without augmentation; with
    two_views_aug, two augmented views per image (SimCLR's evaluation). Under torchrun each
    rank gets its contiguous shard (`shard`) and evaluate() sums over the ranks."""
    info, w = dataset_info(data), world()
    if use_device_pipeline(data, device, image_size):
        images, labels = device_split(data.dataset, data.root, train, image_size,
                                      data.download, device, stored_size(data, image_size))
        part = shard(len(labels), w)
        images = images[part.start:part.stop]
        return DeviceLoader(images, labels[part.start:part.stop], batch_size, image_size,
                            info.mean, info.std, two_views_aug, shuffle=False, drop_last=False,
                            two_views=two_views_aug is not None)
    transform = eval_transform(image_size, info.mean, info.std)
    if two_views_aug is not None:
        transform = TwoViews(train_transform(two_views_aug, image_size, info.mean, info.std))
    dataset = build_dataset(data.dataset, data.root, train, transform, data.download)
    whole = dataset
    if w.distributed:
        dataset = Subset(dataset, shard(len(dataset), w))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=data.num_workers, pin_memory=device.type == "cuda",
                        worker_init_fn=quiet_worker)
    return CheckedLoader(loader, whole) if data.dataset == "folder" else loader
