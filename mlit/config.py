"""Recipes: YAML files read into typed, validated settings, with dotted command-line overrides.

    recipe = load_recipe("recipes/mmlit_s.yaml", ["finetune.epochs=10", "train.amp=bf16"])

A recipe has up to three stages, run in this order: a pre-training stage, `pretrain` (MAE)
or `simclr` (contrastive), then `finetune` (classification from a pre-trained encoder: the
pre-training stage of the same recipe or `finetune.init`), or `supervised` (classification
from scratch). Any bad key, type or value
raises RecipeError with one line that names the key (and, for a YAML problem, the line).
Settings that may change when a run is resumed are listed in SAFE_ON_RESUME.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Optional

import torch
import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from mlit.model_config import MLiTConfig
from mlit.registry import model_config

STAGE_ORDER = ("pretrain", "simclr", "finetune", "supervised")


class RecipeError(ValueError):
    """A recipe or override that cannot run; the message names the key."""


class Strict(BaseModel):
    # unknown keys are errors; .inf and .nan are rejected wherever a number is expected
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def ordered_range(pair: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if not low <= pair[0] <= pair[1] <= high:
        raise ValueError(f"needs {low} <= low <= high <= {high} (got {list(pair)})")
    return pair


class Augment(Strict):
    """Training-set augmentation (paper Tables 3-5; the zoo paper's grid)."""
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

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_ordered(cls, v):
        if v[0] <= 0:
            raise ValueError(f"the smallest crop must cover some of the image (got {list(v)})")
        return ordered_range(v, 0.0, 1.0)


class Stage(Strict):
    """One training stage. lr = base_lr * batch_size / 256 (paper Eq. 17)."""
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    base_lr: float = Field(gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    layer_decay: float = Field(1.0, gt=0, le=1)  # layer-wise lr decay (docs/architecture.md, 10)
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
    # model-zoo bookkeeping (docs/zoo.md): evaluate the untrained model as epoch 0, measure train
    # accuracy in eval mode without augmentation, keep checkpoint_0000XY/ for every epoch
    eval_at_start: bool = False
    eval_train: bool = False
    epoch_checkpoints: bool = False

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1) (got {list(v)})")
        return v

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}")
        return self

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256


class Data(Strict):
    # folder: your own images, train/<class>/<image> and val/<class>/<image> under root
    dataset: Literal["cifar100", "cifar10", "svhn", "flowers102", "digits", "folder"] = \
        "cifar100"
    root: str = "data"
    download: bool = False
    num_workers: int = Field(2, ge=0)  # torchvision pipeline only
    # auto: the device pipeline (uint8 split on the GPU, batched augmentation) on CUDA, the
    # torchvision DataLoader elsewhere; torchvision suits datasets too large for GPU memory
    pipeline: Literal["auto", "torchvision", "device"] = "auto"
    # normalisation; default: the dataset's own (a folder's: computed from its training split)
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    # a folder dataset on the device pipeline is kept at stored_size x stored_size
    # (default: twice model.image_size), so crops keep detail
    stored_size: Optional[int] = Field(None, ge=8)

    @model_validator(mode="after")
    def _mean_and_std_together(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std: give both, or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"data.std={list(self.std)}: must be positive")
        return self


DEVICE_TYPES = ("cpu", "cuda", "mps")


class Train(Strict):
    device: str = "auto"  # auto: cuda if available, else cpu; or cpu, cuda, cuda:N, mps
    amp: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    seed: int = 0
    out: Optional[str] = None  # default runs/<recipe name>
    log_every: int = Field(50, ge=1)  # steps between TensorBoard scalars
    progress: bool = True
    stop_after_epochs: Optional[int] = Field(None, ge=1)  # this invocation only; rerun resumes
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads
    compile: bool = False  # torch.compile the training step's model (Triton MoE included)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    # false: start over in train.out, deleting the checkpoints and logs an earlier run left
    resume: bool = True

    @field_validator("device")
    @classmethod
    def _torch_device(cls, v: str) -> str:
        if v == "auto":
            return v
        try:
            kind = torch.device(v).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in DEVICE_TYPES:
            raise ValueError(f"{v!r} is not a device mlit runs on (auto, cpu, cuda, cuda:N, "
                             "mps)")
        return v


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
        return model_settings(self.model, "model", **extra)


def model_settings(model: dict, key: str = "model", **extra) -> MLiTConfig:
    """A recipe's model section (a registry name and fields) as a validated MLiTConfig;
    `key` names the section in errors."""
    spec = dict(model)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise RecipeError(f"{key}.name: required, e.g. mlit_s")
    try:
        return model_config(name, **{**spec, **extra})
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{key}.{err}") from None


# -- loading ------------------------------------------------------------------------------
class StrictYAMLLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (a second `pretrain:`
    block, a repeated `epochs:`), as strict YAML loaders do, instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} at line {line} (first at line "
                    f"{seen[key]})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """YAML text as Python objects, or RecipeError with the line and column of the problem."""
    try:
        return yaml.load(text, Loader=StrictYAMLLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if problem.startswith("duplicate key"):
            raise RecipeError(f"{where}: {problem}") from None
        raise RecipeError(f"{where}: not valid YAML{at} ({problem})") from None


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value, e.g. finetune.epochs=10")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise RecipeError(f"override {text!r}: no key before '=' (or an empty part in it), "
                          "expected key=value, e.g. finetune.epochs=10")
    return path, parse_yaml(value, f"override {text!r}") if value.strip() else None


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


def format_validation_error(err: ValidationError, whole: str = "recipe") -> str:
    """pydantic's first error as 'field: message'; `whole` names a check of the whole tree
    (none: the message alone, which names its field)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing", "value_error"):
        msg += f" (got {first['input']!r})"
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


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


def read_file_tree(path: Path, what: str, shipped: str, seen: tuple = ()) -> dict:
    """One recipe file as a settings tree. `base: other.yaml` (relative to the file) starts
    from that recipe's tree and merges this file's sections into it, key by key."""
    if not path.is_file():
        raise RecipeError(f"{what} {path} not found ({shipped})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise RecipeError(f"{path}: not a YAML text file (binary content)")
    tree = parse_yaml(text, str(path)) or {}
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise RecipeError(f"{path}: base: expected the file name of another recipe")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise RecipeError(f"{path}: base: {base} leads back to itself")
    return merge(read_file_tree(base_path, what, shipped, (*seen, path.resolve())), tree)


def merge(base: dict, changes: dict) -> dict:
    """base with changes applied; sections merge recursively, other values replace."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_tree(path: str | Path, overrides: list[str], what: str, shipped: str) -> dict:
    """A recipe file (`what`: recipe or zoo recipe) as a settings tree, its name defaulting
    to the file's stem, with the overrides applied."""
    path = Path(path)
    tree = read_file_tree(path, what, shipped)
    tree.setdefault("name", path.stem)
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return tree


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    return build_recipe(read_tree(path, overrides, "recipe", "the shipped ones are in recipes/"))


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)


# -- resuming -----------------------------------------------------------------------------
# Fields a resumed run may change: where and how it runs, how often it logs and checkpoints,
# how it finds its data; none changes what is trained. Every other change is refused, because
# the run folder's checkpoints belong to the recipe in its recipe.yaml.
SAFE_ON_RESUME = {"name", "train.out", "train.resume", "train.stop_after_epochs",
                  "train.progress", "train.log_every", "train.threads", "train.compile",
                  "train.compile_mode", "train.device", "data.root", "data.download",
                  "data.num_workers", "data.pipeline", "model.moe_impl"}
SAFE_STAGE_FIELDS = {"eval_every", "checkpoint_every"}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolved_fields(recipe: Recipe) -> dict[str, object]:
    """Every setting as dotted keys, the model as the full configuration it builds."""
    tree = recipe.model_dump(mode="json", exclude_none=True)
    tree["model"] = {"name": recipe.model["name"], **{
        k: list(v) if isinstance(v, tuple) else v
        for k, v in vars(recipe.model_settings()).items()}}
    return flatten(tree)


def changed_fields(old: Recipe, new: Recipe) -> list[tuple[str, object, object]]:
    """(key, old, new) for every setting that differs and may not change on resume."""
    a, b = resolved_fields(old), resolved_fields(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in SAFE_ON_RESUME
            and k.split(".")[-1] not in SAFE_STAGE_FIELDS]
