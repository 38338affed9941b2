"""The zoo's runs, each named after its factors, and their split into shards."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from mlit.config import Recipe
from mlit.zoo.recipe import STAGE_OF, ZooRecipe


@dataclass
class ZooRun:
    name: str
    path: str  # relative to the zoo folder: pretraining/<model> or finetuning/<backbone>/<model>
    kind: str  # the runner's stage: pretrain | simclr | supervised | finetune
    factors: dict
    recipe: Recipe = field(repr=False)
    backbone: str | None = None  # path of the pre-trained ancestor, for fine-tunes

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "stage": self.kind,
                "backbone": self.backbone, **self.factors}


def backbone_name(kind: str, seed: int) -> str:
    return f"{kind}_seed{seed}"


def finetune_name(lr: float, optimizer: str, head: str, head_seed: int) -> str:
    return f"ft_lr{lr:.0e}_{optimizer}_{head}_seed{head_seed}"


def plan(zoo: ZooRecipe, zoo_dir: str | Path = ".") -> list[ZooRun]:
    """Every pre-training first, then its fine-tunes; the order is stable, so shards are too."""
    zoo_dir = Path(zoo_dir)
    runs: list[ZooRun] = []
    backbones = [(b.kind, s) for b in zoo.backbones for s in b.seeds]
    for kind, seed in backbones:
        name = backbone_name(kind, seed)
        runs.append(ZooRun(name, f"pretraining/{name}", STAGE_OF[kind],
                           {"pretraining": kind, "pretraining_seed": seed},
                           zoo.backbone_recipe(kind, seed, name)))
    grid = zoo.grid
    for (kind, seed), lr, opt, head, head_seed in itertools.product(
            backbones, grid.lr, grid.optimizer, grid.head, grid.head_seed):
        backbone = f"pretraining/{backbone_name(kind, seed)}"
        name = finetune_name(lr, opt, head, head_seed)
        init = zoo_dir / backbone / "checkpoint.pt"
        runs.append(ZooRun(
            name, f"finetuning/{backbone_name(kind, seed)}/{name}", "finetune",
            {"pretraining": kind, "pretraining_seed": seed, "lr": lr, "optimizer": opt,
             "head": head, "head_seed": head_seed},
            zoo.finetune_recipe(name, init, lr, opt, head, head_seed), backbone))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n (Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: needs 0 <= i < n")
    return i, n


def shard(runs: list[ZooRun], i: int, n: int) -> list[ZooRun]:
    """Round-robin: every run lands in exactly one of the n shards, pre-trainings spread."""
    return runs[i::n]
