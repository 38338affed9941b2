"""Where every random draw of training gets its seed, so that a run resumed at any step draws
exactly what an unbroken run draws there (docs/training.md, "Preemption"):

- the order of an epoch: `epoch_seed(seed, stage, epoch)`;
- an image's augmentation (torchvision pipeline): (epoch seed, image);
- a batch's augmentation (device pipeline): (epoch seed, batch, rank);
- everything else a step draws (MAE masks, gate noise, dropout, MixUp/CutMix):
  (seed, stage, step, rank), set by the runner before each step (`seed_everything`).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derived_seed(*parts: int) -> int:
    """A 63-bit seed for one stream of draws from a few integers (a seed, an epoch, an
    image), mixed by numpy's SeedSequence so that neighbouring inputs give unrelated seeds."""
    words = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(2, np.uint32)
    return ((int(words[0]) << 31) ^ int(words[1])) % 2**63


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + sum(map(ord, stage)) * 10_007 + epoch) % (2**63)


def step_seed(seed: int, stage: str, step: int, rank: int) -> int:
    return derived_seed(seed, sum(map(ord, stage)), step, rank)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's generators (CPU, and CUDA once it is in use) from one
    seed. Cheap enough for every step: torch.manual_seed would also queue a seeding of CUDA
    with a captured stack trace (a millisecond) where CUDA is not initialised."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
