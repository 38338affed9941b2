"""The input side of tools/bench_train.py: synthetic CIFAR-shaped images (uint8 32x32)
augmented to 36x36 as the recipes do, through the runner's device pipeline
(mlit.data.device.DeviceLoader) or torchvision's DataLoader, and the time to produce a batch
alone."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlit.recipe.schema import Augment

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100's (data.catalogue)


class SyntheticCIFAR(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def make_input(kind: str, images: np.ndarray, labels: np.ndarray, batch: int, aug: Augment,
               device: torch.device, workers: int):
    from mlit.data.device import DeviceLoader
    from mlit.data.transforms import train_transform

    if kind == "device":
        loader = DeviceLoader(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
                              .to(device), torch.from_numpy(labels).to(device), batch, 36,
                              MEAN, STD, aug)
    else:
        dataset = SyntheticCIFAR(images, labels, train_transform(aug, 36, MEAN, STD))
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=workers > 0)

    def batches():
        while True:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return batches()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_input(batches, device, steps: int) -> float:
    next(batches)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    sync(device)
    return (time.perf_counter() - start) / steps
