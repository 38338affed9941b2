"""The recipe of `mlit.train`: its sections and every field, typed and validated (pydantic).

    recipe = load_recipe("recipes/mmlit_s.yaml", ["finetune.epochs=10", "train.amp=bf16"])

A recipe has up to three stages, run in this order: a pre-training stage, `pretrain` (MAE)
or `simclr` (contrastive), then `finetune` (classification from a pre-trained encoder: the
pre-training stage of the same recipe or `finetune.init`), or `supervised` (classification
from scratch). Any bad key, type or value
raises RecipeError with one line that names the key (and, for a YAML problem, the line;
reading the YAML is mlit/recipe/reading.py). The settings a resumed run may change are
mlit/training/resume.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
import yaml
from pydantic import Field, field_validator, model_validator
from pydantic import Strict as PydanticStrict

from mlit.model.config import MLiTConfig
from mlit.model.registry import model_config
from mlit.model.stage_kinds import CLASSIFIERS, FROM_PRETRAINING, PRETRAINING, STAGE_ORDER
from mlit.recipe.reading import RecipeError, Strict, read_tree, validate

Fraction = Annotated[float, PydanticStrict(), Field(ge=0)]  # a number, never a bool or a string


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
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"  # lars: timm's, for linprobe
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
    # finetune, linprobe: the checkpoint or encoder export whose encoder starts the stage;
    # linprobe also takes "random", the encoder as initialised (the probe's baseline)
    init: Optional[str] = None
    head: Optional[Literal["linear", "mlp"]] = None  # overrides model.head for this stage
    head_seed: Optional[int] = None  # own generator for the head's initial weights
    eval_every: int = Field(1, ge=1)  # epochs
    checkpoint_every: int = Field(10, ge=1)  # epochs; the last epoch is always written
    # pretrain, simclr: a weighted k-NN top-1 of the frozen encoder's features every this
    # many epochs and at the last (docs/training.md, "Monitoring pre-training"); 0: none
    knn_every: int = Field(0, ge=0)
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
    # normalisation of pixels scaled to [0, 1], per RGB channel; default: the dataset's own
    # (a folder's: computed from its training split). Numbers only: true or "0.5" is refused
    mean: Optional[tuple[Fraction, Fraction, Fraction]] = None
    std: Optional[tuple[Fraction, Fraction, Fraction]] = None
    # a folder dataset on the device pipeline is kept at stored_size x stored_size
    # (default: twice model.image_size), so crops keep detail
    stored_size: Optional[int] = Field(None, ge=8)

    @model_validator(mode="after")
    def _mean_and_std_together(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std: give both, or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"data.std={list(self.std)}: must be positive")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and max(values) > 1:
                scaled = ", ".join(f"{v / 255:.3f}" for v in values)
                raise ValueError(f"data.{key}={list(values)}: on the 0-255 pixel scale; mlit "
                                 f"normalises pixels scaled to [0, 1], so divide by 255: "
                                 f"[{scaled}]")
        return self


DEVICE_TYPES = ("cpu", "cuda", "mps")


class ProbeStage(Stage):
    """linprobe: MAE's linear-probing protocol (main_linprobe.py) unless the recipe says
    otherwise: LARS (timm's), base lr 0.1, no weight decay, random resized crop (0.08, 1) and
    flip alone."""
    optimizer: Literal["adamw", "sgd", "lars"] = "lars"
    base_lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    augment: Augment = Augment(crop_scale=(0.08, 1.0))


class Train(Strict):
    device: str = "auto"  # auto: cuda if available, else cpu; or cpu, cuda, cuda:N, mps
    amp: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    seed: int = 0
    out: Optional[str] = None  # default runs/<recipe name>
    log_every: int = Field(50, ge=1)  # steps between TensorBoard scalars
    progress: bool = True
    stop_after_epochs: Optional[int] = Field(None, ge=1)  # this invocation only; rerun resumes
    # a recovery checkpoint once this many minutes passed since the last checkpoint, at a
    # step's end, so a run killed outright loses at most that much; 0: none
    checkpoint_minutes: float = Field(30.0, ge=0, allow_inf_nan=False)
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
            device_type = torch.device(v).type
        except (RuntimeError, TypeError):
            device_type = None
        if device_type not in DEVICE_TYPES:
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
    linprobe: Optional[ProbeStage] = None
    finetune: Optional[Stage] = None
    supervised: Optional[Stage] = None

    @model_validator(mode="after")
    def _stages_fit(self):
        if not any(getattr(self, s) for s in STAGE_ORDER):
            raise ValueError(f"a recipe needs at least one of {', '.join(STAGE_ORDER)}")
        if self.finetune and self.supervised:
            raise ValueError("finetune and supervised exclude each other: pick one")
        if self.pretrain and self.simclr:
            raise ValueError("pretrain and simclr exclude each other: pick one pre-training")
        for kind in FROM_PRETRAINING:
            stage = getattr(self, kind)
            if stage and not (self.pretraining_stage() or stage.init):
                raise ValueError(f"{kind} needs a pretrain stage or {kind}.init=<checkpoint>")
        if self.linprobe and self.supervised:
            raise ValueError("linprobe probes a pre-trained encoder; supervised has none")
        if self.linprobe and self.linprobe.optimizer == "lars":
            import importlib.util
            if importlib.util.find_spec("timm") is None:
                raise ValueError("linprobe.optimizer=lars is timm's LARS: install timm "
                                 "(pip install timm), or use sgd")
        for kind in PRETRAINING:
            if getattr(self, kind) and getattr(self, kind).layer_decay != 1.0:
                raise ValueError(f"{kind}.layer_decay applies to classifiers only; leave it 1.0")
        for kind in CLASSIFIERS:
            stage = getattr(self, kind)
            if stage and stage.knn_every:
                raise ValueError(f"{kind}.knn_every={stage.knn_every}: the k-NN monitor "
                                 f"watches pre-training ({', '.join(PRETRAINING)}); a "
                                 "classifier stage reports its own test accuracy")
        return self

    def pretraining_stage(self) -> Optional[str]:
        return next((kind for kind in PRETRAINING if getattr(self, kind)), None)

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


def build_recipe(tree: dict) -> Recipe:
    recipe = validate(Recipe, tree)
    recipe.model_settings()  # validates model.* fields now, before any work
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    return build_recipe(read_tree(path, overrides, "recipe", "the shipped ones are in recipes/"))


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
