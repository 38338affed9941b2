"""Where every random draw of training gets its seed, so that a run resumed at any step draws
exactly what an unbroken run draws there (docs/training.md, "Preemption"):

- the order of an epoch: `epoch_seed(seed, stage, epoch)`;
- an image's augmentation (torchvision pipeline): (epoch seed, image);
- a batch's augmentation (device pipeline): (epoch seed, batch, rank);
- everything else a step draws (MAE masks, gate noise, dropout, MixUp/CutMix):
  (seed, stage, step, rank), set by the runner before each step.
"""

from __future__ import annotations

import numpy as np


def derived_seed(*parts: int) -> int:
    """A 63-bit seed for one stream of draws from a few integers (a seed, an epoch, an
    image), mixed by numpy's SeedSequence so that neighbouring inputs give unrelated seeds."""
    words = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(2, np.uint32)
    return ((int(words[0]) << 31) ^ int(words[1])) % 2**63


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + sum(map(ord, stage)) * 10_007 + epoch) % (2**63)


def step_seed(seed: int, stage: str, step: int, rank: int) -> int:
    return derived_seed(seed, sum(map(ord, stage)), step, rank)
