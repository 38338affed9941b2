"""Dropout with its mask drawn faster on the CPU.

PyTorch draws a CPU dropout mask with `bernoulli_`: one number from its Mersenne Twister a
value, on one thread, which at a CPU training batch costs twenty times the GELU beside it
(4.2 ms against 0.2 ms for a (4,640, 144) activation, a batch of 32 CIFAR images). Here the
mask takes 16 random bits a value, four values from each 64-bit draw of the same generator,
kept where the bits fall below (1 - p) in 65,536ths: the drop rate is p to 1/65,536 (0.1 is
0.100006), and the survivors are scaled by the inverse of the kept share, so that the
output's mean is the input's as with any dropout. The bits come from torch's own generator,
so a seeded run draws the same masks again. That mask takes 1.4 ms for the same activation,
and a whole CPU training step is 3-9% faster (docs/benchmarks.md; tools/bench_train.py's
`-torchdrop` variants).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlit.model.capture import capturing_graph

LEVELS = 1 << 16  # the mask's resolution: 16 random bits a value


class Dropout(nn.Dropout):
    """nn.Dropout (the same p, the same identity in evaluation mode); in eager training on the
    CPU its mask comes from `cpu_dropout`. In a graph (scripted, recorded or compiled), on
    other devices, and where p is within 1/65,536 of 0 or 1, it is F.dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if torch.jit.is_scripting():
            return F.dropout(x, self.p, True)
        return dropout_eager(x, self.p)


@torch.jit.unused
def dropout_eager(x: torch.Tensor, p: float) -> torch.Tensor:
    kept = round((1.0 - p) * LEVELS)  # of LEVELS
    if capturing_graph() or torch.compiler.is_compiling() or x.device.type != "cpu" \
            or not 0 < kept < LEVELS:
        return F.dropout(x, p, True)
    return cpu_dropout(x, kept)


def cpu_dropout(x: torch.Tensor, kept: int) -> torch.Tensor:
    """x with each value kept with chance kept / 65,536 and scaled by 65,536 / kept, else 0."""
    n = x.numel()
    # from the lowest int64 and no upper bound: every one of the 64 bits random (a plain
    # random_() leaves the top bit 0, and so the top lane biased)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    lanes = draws.view(torch.int16)[:n].view(x.shape)  # each uniform on [-32,768, 32,767]
    mask = (lanes < kept - LEVELS // 2).to(x.dtype).mul_(LEVELS / kept)
    return x * mask
