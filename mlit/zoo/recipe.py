"""Zoo recipes: the backbones (pre-training variants lambda_P and their seeds) and the
fine-tune grid lambda_F (the ViT model-zoo paper, Appendix A.1; docs/zoo.md). Every run of a zoo is an ordinary
one-stage recipe of `mlit.train`, built here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mlit.recipe.reading import Strict, read_tree, validate
from mlit.recipe.schema import Data, Recipe, Stage, Train, build_recipe

# a backbone's pre-training variant -> the runner's stage that trains it
STAGE_OF = {"mae": "pretrain", "supervised": "supervised", "simclr": "simclr"}


Variant = Literal["mae", "supervised", "simclr"]  # the pre-training variants, lambda_P


class Backbone(Strict):
    kind: Variant
    seeds: list[int] = Field(min_length=1)


class Grid(Strict):
    """The fine-tune factors. `lr` is the learning rate itself (the paper's batch is 256)."""
    lr: list[float] = Field(min_length=1)
    optimizer: list[Literal["adamw", "sgd"]] = Field(min_length=1)
    head: list[Literal["linear", "mlp"]] = Field(min_length=1)
    head_seed: list[int] = Field(min_length=1)


class ZooRecipe(Strict):
    name: str
    model: dict = Field(default_factory=lambda: {"name": "mlit_xxs"})
    # model overrides per pre-training variant (the supervised ViTs' stochastic depth) and
    # for the fine-tunes
    pretraining_model: dict[Variant, dict] = Field(default_factory=dict)
    finetune_model: dict = Field(default_factory=dict)
    pretrain_data: Data
    finetune_data: Data
    train: Train = Train()
    backbones: list[Backbone] = Field(min_length=1)
    pretraining: dict[Variant, Stage]
    finetune: Stage
    grid: Grid

    @model_validator(mode="after")
    def _every_backbone_has_a_stage(self):
        for b in self.backbones:
            if b.kind not in self.pretraining:
                raise ValueError(f"backbone kind {b.kind!r} needs pretraining.{b.kind}")
        return self

    def backbone_recipe(self, kind: str, seed: int, name: str) -> Recipe:
        stage = self.pretraining[kind].model_dump()
        stage.update(eval_at_start=True, epoch_checkpoints=True, checkpoint_every=1,
                     eval_train=kind == "supervised")
        return build_recipe({
            "name": name, "model": {**self.model, **self.pretraining_model.get(kind, {})},
            "data": self.pretrain_data.model_dump(),
            "train": {**self.train.model_dump(), "seed": seed}, STAGE_OF[kind]: stage})

    def finetune_recipe(self, name: str, init: Path, lr: float, optimizer: str, head: str,
                        head_seed: int) -> Recipe:
        stage = self.finetune.model_dump()
        stage.update(base_lr=lr * 256 / stage["batch_size"], optimizer=optimizer, head=head,
                     head_seed=head_seed, init=str(init), eval_at_start=True, eval_train=True,
                     epoch_checkpoints=True, checkpoint_every=1)
        return build_recipe({
            "name": name, "model": {**self.model, **self.finetune_model},
            "data": self.finetune_data.model_dump(), "train": self.train.model_dump(),
            "finetune": stage})


def load_zoo_recipe(path: str | Path, overrides: list[str] = ()) -> ZooRecipe:
    tree = read_tree(path, overrides, "zoo recipe", "the shipped one is recipes/zoo.yaml")
    zoo = validate(ZooRecipe, tree)
    zoo.backbone_recipe(zoo.backbones[0].kind, 0, "check")  # model fields, stage rules
    return zoo
