"""Shape-sweep recipes: a centre model, the shape dimensions to vary, the training stage and
the compute budgets (docs/shape.md). Each run of a sweep is an ordinary one-stage recipe of
`mlit.train`, built here, as the zoo's are.

The dimensions, by the names the scaling-law fits use:

    d      width, `embed_dim`; heads follow at the centre's head size, and key/value groups
           at its heads-per-group ratio
    L      depth, `depth`
    h1     first hidden size, `hidden_first`; the last, hL, keeps the centre's ratio hL / h1
    E_max  experts of the last stage; the stages rise evenly from min(centre's first, E_max)
    k      experts per token, `top_k`
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from mlit.model.config import MLiTConfig
from mlit.recipe.reading import RecipeError, Strict, read_tree, validate
from mlit.recipe.schema import Data, Recipe, Stage, Train, build_recipe, model_settings

Dim = Literal["d", "L", "h1", "E_max", "k"]
DIMS = ("d", "L", "h1", "E_max", "k")


def shape_of(cfg: MLiTConfig) -> dict[str, int]:
    """A model's values of the five dimensions."""
    return {"d": cfg.embed_dim, "L": cfg.depth, "h1": cfg.hidden_first,
            "E_max": cfg.expert_stages[-1], "k": cfg.top_k}


def with_shape(centre: MLiTConfig, shape: dict[str, int]) -> MLiTConfig:
    """The centre's config with the given dimension values (see the module docstring)."""
    fields: dict = {}
    if shape["d"] != centre.embed_dim:
        head = centre.embed_dim // centre.num_heads
        per_group = centre.num_heads // centre.num_kv_groups
        heads = shape["d"] // head
        if shape["d"] % head or heads % per_group:
            raise ValueError(f"d={shape['d']}: needs a multiple of the centre's head size "
                             f"{head} giving a multiple of {per_group} heads")
        fields.update(embed_dim=shape["d"], num_heads=heads, num_kv_groups=heads // per_group)
    if shape["L"] != centre.depth:
        fields["depth"] = shape["L"]
    if shape["h1"] != centre.hidden_first:
        ratio = centre.hidden_last / centre.hidden_first
        fields.update(hidden_first=shape["h1"], hidden_last=max(1, round(shape["h1"] * ratio)))
    if shape["E_max"] != centre.expert_stages[-1]:
        stages = len(centre.expert_stages)
        low = min(centre.expert_stages[0], shape["E_max"])
        fields["expert_stages"] = tuple(
            round(low + (shape["E_max"] - low) * i / max(stages - 1, 1)) for i in range(stages))
    if shape["k"] != centre.top_k:
        fields["top_k"] = shape["k"]
    return centre.replace(**fields)


class ShapeSweep(Strict):
    """A SoViT star sweep (Alabdulmohsin et al. 2023): around the centre, vary one dimension
    at a time; train every shape once per compute budget, its schedule fitted to the budget."""
    name: str
    centre: dict = Field(default_factory=lambda: {"name": "mlit_xs"})  # model name + fields
    dims: dict[Dim, list[int]] = Field(min_length=1)
    stage: Literal["supervised", "mae", "mae_finetune"] = "supervised"
    budgets: list[float] = Field(min_length=1)  # training FLOPs (forward + backward), per run
    pretrain_share: float = Field(0.75, gt=0, lt=1)  # mae_finetune: pre-training's part
    warmup_fraction: float = Field(0.05, ge=0, lt=1)  # of each run's epochs
    data: Data = Data()
    train: Train = Train()
    supervised: Optional[Stage] = None  # templates: epochs and warm-up follow the budget
    pretrain: Optional[Stage] = None
    finetune: Optional[Stage] = None

    def kinds(self) -> tuple[str, ...]:
        """The stage kinds each run of the sweep trains, in order."""
        return {"supervised": ("supervised",), "mae": ("pretrain",),
                "mae_finetune": ("pretrain", "finetune")}[self.stage]

    @model_validator(mode="after")
    def _stages_given(self):
        for kind in self.kinds():
            if getattr(self, kind) is None:
                raise ValueError(f"stage {self.stage} needs a {kind} section")
        if any(b <= 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive FLOP counts (got {self.budgets})")
        for dim, values in self.dims.items():
            if not values or any(v < 1 for v in values):
                raise ValueError(f"dims.{dim}: needs positive integers (got {values})")
        return self

    def centre_config(self) -> MLiTConfig:
        return model_settings(self.centre, "centre")

    def shapes(self) -> list[tuple[dict[str, int], list[str]]]:
        """Every shape of the star and the arms it is on: the centre is on every arm."""
        centre = shape_of(self.centre_config())
        shapes = {tuple(centre.values()): (centre, list(self.dims))}
        for dim, values in self.dims.items():
            for value in values:
                shape = {**centre, dim: value}
                key = tuple(shape.values())
                if key not in shapes:
                    shapes[key] = (shape, [dim])
        return list(shapes.values())

    def model_for(self, shape: dict[str, int]) -> dict:
        """The recipe `model` section of a shape: the centre's name and the changed fields
        (ValueError naming the field when the shape cannot be built)."""
        centre = self.centre_config()
        cfg = with_shape(centre, shape)
        changed = {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in vars(cfg).items() if getattr(centre, k) != v}
        return {**self.centre, **changed}

    def run_recipe(self, name: str, kind: str, shape: dict, epochs: int,
                   init: Path | None = None) -> Recipe:
        stage = getattr(self, kind).model_dump()
        stage.update(epochs=epochs, warmup_epochs=round(self.warmup_fraction * epochs, 3),
                     checkpoint_every=max(1, epochs // 10))
        if init is not None:
            stage["init"] = str(init)
        return build_recipe({"name": name, "model": self.model_for(shape),
                             "data": self.data.model_dump(), "train": self.train.model_dump(),
                             kind: stage})


def load_sweep(path: str | Path, overrides: list[str] = ()) -> ShapeSweep:
    tree = read_tree(path, overrides, "shape-sweep recipe",
                     "the shipped one is recipes/shape_sweep.yaml")
    for kind in ("supervised", "pretrain", "finetune"):  # epochs follow the budgets
        if isinstance(tree.get(kind), dict):
            tree[kind].setdefault("epochs", 1)
    sweep = validate(ShapeSweep, tree)
    centre = sweep.centre_config()
    for shape, arms in sweep.shapes():  # every shape builds, before any work
        if shape == shape_of(centre):
            continue
        try:
            sweep.model_for(shape)
        except ValueError as err:
            raise RecipeError(f"dims.{arms[0]}={shape[arms[0]]}: {err}") from None
    return sweep
