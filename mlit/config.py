"""Recipes: YAML files read into typed, validated settings, with dotted command-line overrides.

    recipe = load_recipe("recipes/mmlit_s.yaml", ["finetune.epochs=10", "train.amp=bf16"])

A recipe has up to three stages, run in this order: a pre-training stage, `pretrain` (MAE)
or `simclr` (contrastive), then `finetune` (classification from a pre-trained encoder: the
pre-training stage of the same recipe or `finetune.init`), or `supervised` (classification
from scratch). Any bad key, type or value
raises RecipeError with one line that names the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlit.model_config import MLiTConfig
from mlit.registry import model_config

STAGE_ORDER = ("pretrain", "simclr", "finetune", "supervised")


class RecipeError(ValueError):
    """A recipe or override that cannot run; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Augment(Strict):
    """Training-set augmentation (paper Tables 3-5; zoo grid of seed 001)."""
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    auto_augment: Optional[Literal["cifar10", "svhn", "imagenet"]] = None
    rotation: float = Field(0.0, ge=0, le=180)  # degrees, RandomRotation(+-rotation)
    random_erasing: float = Field(0.0, ge=0, le=1)  # probability
    mixup: float = Field(0.0, ge=0)  # Beta(alpha, alpha); 0 is off
    cutmix: float = Field(0.0, ge=0)  # Beta(alpha, alpha); 0 is off
    color_jitter: float = Field(0.0, ge=0)  # SimCLR's strength s: jitter(0.8s, 0.8s, 0.8s, 0.2s), p=0.8
    grayscale: float = Field(0.0, ge=0, le=1)  # probability


class Stage(Strict):
    """One training stage. lr = base_lr * batch_size / 256 (paper Eq. 17)."""
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    base_lr: float = Field(gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    layer_decay: float = Field(1.0, gt=0, le=1)  # layer-wise lr decay (SPEC 5)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    clip_grad: Optional[float] = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: Augment = Augment()
    init: Optional[str] = None  # finetune: checkpoint whose encoder starts the stage
    head: Optional[Literal["linear", "mlp"]] = None  # overrides model.head for this stage
    head_seed: Optional[int] = None  # own generator for the head's initial weights
    eval_every: int = Field(1, ge=1)  # epochs
    checkpoint_every: int = Field(10, ge=1)  # epochs; the last epoch is always written
    # model-zoo bookkeeping (seed 001): evaluate the untrained model as epoch 0, measure train
    # accuracy in eval mode without augmentation, keep checkpoint_0000XY/ for every epoch
    eval_at_start: bool = False
    eval_train: bool = False
    epoch_checkpoints: bool = False

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}")
        return self

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


class Data(Strict):
    dataset: Literal["cifar100", "cifar10", "svhn", "flowers102", "digits"] = "cifar100"
    root: str = "data"
    download: bool = False
    num_workers: int = Field(2, ge=0)  # torchvision pipeline only
    # auto: the device pipeline (uint8 split on the GPU, batched augmentation) on CUDA, the
    # torchvision DataLoader elsewhere; torchvision suits datasets too large for GPU memory
    pipeline: Literal["auto", "torchvision", "device"] = "auto"


class Train(Strict):
    device: str = "auto"  # auto: cuda if available, else cpu
    amp: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    seed: int = 0
    out: Optional[str] = None  # default runs/<recipe name>
    log_every: int = Field(50, ge=1)  # steps between TensorBoard scalars
    progress: bool = True
    stop_after_epochs: Optional[int] = Field(None, ge=1)  # this invocation only; rerun resumes
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads
    compile: bool = False  # torch.compile the training step's model (Triton MoE included)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"


class Recipe(Strict):
    name: str
    model: dict = Field(default_factory=lambda: {"name": "mlit_s"})
    data: Data = Data()
    train: Train = Train()
    pretrain: Optional[Stage] = None
    simclr: Optional[Stage] = None
    finetune: Optional[Stage] = None
    supervised: Optional[Stage] = None

    @model_validator(mode="after")
    def _stages_fit(self):
        if not any(getattr(self, s) for s in STAGE_ORDER):
            raise ValueError("a recipe needs at least one of pretrain, simclr, finetune, supervised")
        if self.finetune and self.supervised:
            raise ValueError("finetune and supervised exclude each other: pick one")
        if self.pretrain and self.simclr:
            raise ValueError("pretrain and simclr exclude each other: pick one pre-training")
        if self.finetune and not (self.pretraining_stage() or self.finetune.init):
            raise ValueError("finetune needs a pretrain stage or finetune.init=<checkpoint>")
        for kind in ("pretrain", "simclr"):
            if getattr(self, kind) and getattr(self, kind).layer_decay != 1.0:
                raise ValueError(f"{kind}.layer_decay applies to classifiers only; leave it 1.0")
        return self

    def pretraining_stage(self) -> Optional[str]:
        return "pretrain" if self.pretrain else "simclr" if self.simclr else None

    def stages(self) -> list[tuple[str, Stage]]:
        return [(s, getattr(self, s)) for s in STAGE_ORDER if getattr(self, s) is not None]

    def model_settings(self, **extra) -> MLiTConfig:
        spec = dict(self.model)
        name = spec.pop("name", None)
        if not isinstance(name, str):
            raise RecipeError("model.name: required, e.g. mlit_s")
        try:
            return model_config(name, **{**spec, **extra})
        except (ValueError, TypeError) as err:
            raise RecipeError(f"model.{err}") from None


# -- loading ------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value, e.g. finetune.epochs=10")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_override(tree: dict, path: list[str], value) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:  # a section the YAML left out; validation names unknown ones
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{'.'.join(path[:i + 1])}: not a section, cannot set "
                              f"{'.'.join(path)}")
        node = child
    node[path[-1]] = value


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "recipe"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing", "value_error"):
        msg += f" (got {first['input']!r})"
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}"


def validate(schema: type[BaseModel], tree: dict):
    """The settings tree as `schema`, or RecipeError naming the first bad key."""
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err)) from None


def build_recipe(tree: dict) -> Recipe:
    recipe = validate(Recipe, tree)
    recipe.model_settings()  # validates model.* fields now, before any work
    return recipe


def read_tree(path: str | Path, overrides: list[str], what: str, shipped: str) -> dict:
    """A recipe file (`what`: recipe or zoo recipe) as a settings tree, its name defaulting
    to the file's stem, with the overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{what} {path} not found ({shipped})")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err.problem})") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    tree = copy.deepcopy(tree)
    tree.setdefault("name", path.stem)
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return tree


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    return build_recipe(read_tree(path, overrides, "recipe", "the shipped ones are in recipes/"))


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
