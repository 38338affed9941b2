"""DataLoaders whose order and augmentation are a function of (seed, epoch), so a resumed run
sees exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from mlit.config import Augment, Data
from mlit.data.datasets import INFO, build_dataset
from mlit.data.transforms import TwoViews, eval_transform, train_transform


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + sum(map(ord, stage)) * 10_007 + epoch) % (2**63)


def train_loader(data: Data, aug: Augment, image_size: int, batch_size: int,
                 pin_memory: bool = False, two_views: bool = False) -> DataLoader:
    info = INFO[data.dataset]
    transform = train_transform(aug, image_size, info.mean, info.std)
    dataset = build_dataset(data.dataset, data.root, True,
                            TwoViews(transform) if two_views else transform, data.download)
    if len(dataset) < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(dataset)} training images "
                         f"of {data.dataset}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=data.num_workers, pin_memory=pin_memory,
                      generator=torch.Generator())


def eval_loader(data: Data, image_size: int, batch_size: int, pin_memory: bool = False,
                train: bool = False, two_views_aug: Augment | None = None):
    """The test split (or, with train=True, the training split) without augmentation; with
    two_views_aug, two augmented views per image (SimCLR's evaluation)."""
    info = INFO[data.dataset]
    transform = eval_transform(image_size, info.mean, info.std)
    if two_views_aug is not None:
        transform = TwoViews(train_transform(two_views_aug, image_size, info.mean, info.std))
    dataset = build_dataset(data.dataset, data.root, train, transform,
                            data.download)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      num_workers=data.num_workers, pin_memory=pin_memory)
