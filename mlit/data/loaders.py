"""Loaders for the runner. Two pipelines with one interface (len, iteration, a `generator`
reseeded every epoch, so a resumed run sees exactly the batches of an uninterrupted one):

- torchvision: a DataLoader over PIL images with torchvision.transforms.v2 in workers;
- device: the split as uint8 on the training device, augmented in batches (data/device.py).

`data.pipeline: auto` picks device on CUDA and torchvision elsewhere.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader

from mlit.config import Augment, Data
from mlit.data.datasets import INFO, build_dataset
from mlit.data.device import DeviceLoader, dataset_to_ragged, dataset_to_uint8, has_arrays
from mlit.data.transforms import TwoViews, eval_transform, train_transform


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + sum(map(ord, stage)) * 10_007 + epoch) % (2**63)


def use_device_pipeline(data: Data, device: torch.device) -> bool:
    return data.pipeline == "device" or (data.pipeline == "auto" and device.type == "cuda")


@functools.lru_cache(maxsize=8)
def device_split(name: str, root: str, train: bool, size: int, download: bool,
                 device: torch.device):
    """A split decoded once per process (the zoo trains many runs on the same data): one
    uint8 tensor, or for a training split of large images of many sizes (Flowers102) a list
    of the images at full resolution, so random crops keep their detail."""
    dataset = build_dataset(name, root, train, None, download)
    if train and not has_arrays(dataset):
        images, labels = dataset_to_ragged(dataset)
        return [image.to(device) for image in images], labels.to(device)
    images, labels = dataset_to_uint8(dataset, size)
    return images.to(device), labels.to(device)


def train_loader(data: Data, aug: Augment, image_size: int, batch_size: int,
                 device: torch.device, two_views: bool = False):
    info = INFO[data.dataset]
    if use_device_pipeline(data, device):
        images, labels = device_split(data.dataset, data.root, True, image_size, data.download,
                                      device)
        loader = DeviceLoader(images, labels, batch_size, image_size, info.mean, info.std,
                              aug, two_views=two_views)
        n = len(images)
    else:
        transform = train_transform(aug, image_size, info.mean, info.std)
        dataset = build_dataset(data.dataset, data.root, True,
                                TwoViews(transform) if two_views else transform, data.download)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=data.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator())
        n = len(dataset)
    if n < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training images "
                         f"of {data.dataset}")
    return loader


def eval_loader(data: Data, image_size: int, batch_size: int, device: torch.device,
                train: bool = False, two_views_aug: Augment | None = None):
    """The test split (or, with train=True, the training split) without augmentation; with
    two_views_aug, two augmented views per image (SimCLR's evaluation)."""
    info = INFO[data.dataset]
    if use_device_pipeline(data, device):
        images, labels = device_split(data.dataset, data.root, train, image_size,
                                      data.download, device)
        return DeviceLoader(images, labels, batch_size, image_size, info.mean, info.std,
                            two_views_aug, shuffle=False, drop_last=False,
                            two_views=two_views_aug is not None)
    transform = eval_transform(image_size, info.mean, info.std)
    if two_views_aug is not None:
        transform = TwoViews(train_transform(two_views_aug, image_size, info.mean, info.std))
    dataset = build_dataset(data.dataset, data.root, train, transform, data.download)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      num_workers=data.num_workers, pin_memory=device.type == "cuda")
