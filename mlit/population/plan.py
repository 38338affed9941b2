"""A population of training runs, planned before any is trained: each run's name, folder,
stage, factors and recipe, and the split of the runs into shards (Slurm array tasks, or
machines). The zoo (mlit/zoo/plan.py) and the shape sweep (mlit/shape/plan.py) plan theirs as
PlannedRun lists, which mlit/population/runner.py trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlit.errors import BadInput
from mlit.recipe.schema import Recipe


@dataclass
class PlannedRun:
    name: str
    path: str  # relative to the population's folder, e.g. pretraining/<model>
    kind: str  # the runner's stage: pretrain | simclr | supervised | finetune
    factors: dict
    recipe: Recipe = field(repr=False)
    backbone: str | None = None  # path of the pre-trained ancestor, for fine-tunes

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "stage": self.kind,
                "backbone": self.backbone, **self.factors}


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n (Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise BadInput(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise BadInput(f"--shard {text!r}: needs 0 <= i < n")
    return i, n


def shard(runs: list[PlannedRun], i: int, n: int) -> list[PlannedRun]:
    """Round-robin: every run lands in exactly one of the n shards, pre-trainings spread."""
    return runs[i::n]
