"""The zoo's runs, each named after its factors (the ViT model-zoo paper's grid, docs/zoo.md)."""

from __future__ import annotations

import itertools
from pathlib import Path

from mlit.population.plan import PlannedRun
from mlit.zoo.recipe import STAGE_OF, ZooRecipe


def backbone_name(kind: str, seed: int) -> str:
    return f"{kind}_seed{seed}"


def finetune_name(lr: float, optimizer: str, head: str, head_seed: int) -> str:
    return f"ft_lr{lr:.0e}_{optimizer}_{head}_seed{head_seed}"


def plan(zoo: ZooRecipe, zoo_dir: str | Path = ".") -> list[PlannedRun]:
    """Every pre-training first, then its fine-tunes; the order is stable, so shards are too."""
    zoo_dir = Path(zoo_dir)
    runs: list[PlannedRun] = []
    backbones = [(b.kind, s) for b in zoo.backbones for s in b.seeds]
    for kind, seed in backbones:
        name = backbone_name(kind, seed)
        runs.append(PlannedRun(name, f"pretraining/{name}", STAGE_OF[kind],
                           {"pretraining": kind, "pretraining_seed": seed},
                           zoo.backbone_recipe(kind, seed, name)))
    grid = zoo.grid
    for (kind, seed), lr, opt, head, head_seed in itertools.product(
            backbones, grid.lr, grid.optimizer, grid.head, grid.head_seed):
        backbone = f"pretraining/{backbone_name(kind, seed)}"
        name = finetune_name(lr, opt, head, head_seed)
        init = zoo_dir / backbone / "checkpoint.pt"
        runs.append(PlannedRun(
            name, f"finetuning/{backbone_name(kind, seed)}/{name}", "finetune",
            {"pretraining": kind, "pretraining_seed": seed, "lr": lr, "optimizer": opt,
             "head": head, "head_seed": head_seed},
            zoo.finetune_recipe(name, init, lr, opt, head, head_seed), backbone))
    return runs
