"""mLiT inside timm (docs/timm.md). When timm is installed, `import mlit` registers every named
mLiT (mlit_s, mlit_xs, mlit_xxs, and the CPU sizes mlit_tiny, mlit_micro) and its MAE
encoder as a feature backbone (mmlit_s, ... : no head, num_classes=0) in timm's registry:

    model = timm.create_model("mlit_s", num_classes=10)       # mlit.create_model's parameters
    model = timm.create_model("mlit_s", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file="runs/x/model.safetensors"))

`TimmMLiT` is the classifier with timm's conventions: forward returns the logits alone, and
the mixture-of-experts loss of the last forward is `model.moe_loss`, for a training loop that
adds it (loss = CE + model.cfg.moe_loss_weight * model.moe_loss, as mlit's runner does).
Weights from `python -m mlit.export` load through `pretrained_cfg_overlay=dict(file=...)`: a
classifier's as they are, an encoder-only export's into the encoder (the head keeps its
initialisation). The default pretrained_cfg describes the paper's input: CIFAR-100 images
resized whole (bilinear) to the model's image_size and normalised with CIFAR-100's
statistics, as mlit's evaluation transform does.
"""

from __future__ import annotations

import importlib.util

from torch import nn

from mlit.data.catalogue import INFO
from mlit.model.encoder import MLiT, build_head
from mlit.model.registry import CONFIGS, model_config

BACKBONE_PREFIX = "m"  # mmlit_s: the MAE-pre-trained (mmLiT) encoder of mlit_s, no head


class TimmMLiT(MLiT):
    """An mLiT classifier with timm's model interface (forward_features, forward_head,
    reset_classifier, get_classifier, num_features, group_matcher); num_classes=0 leaves the
    head out, so forward gives the pooled features."""

    def __init__(self, name: str = "mlit_s", num_classes: int = 100, in_chans: int = 3,
                 img_size: int | None = None, **overrides):
        settings = {"num_classes": max(num_classes, 1), "in_channels": in_chans, **overrides}
        if img_size is not None:  # timm passes its pretrained_cfg's (H, W)
            sides = {img_size} if isinstance(img_size, int) else set(img_size)
            if len(sides) != 1:
                raise ValueError(f"img_size={img_size}: mLiT takes square images")
            settings["image_size"] = sides.pop()
        super().__init__(model_config(name, **settings))
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.cfg.embed_dim
        if num_classes == 0:
            self.head = nn.Identity()
        self.moe_loss = None  # the mixture-of-experts loss of the last forward

    def forward_features(self, x):
        """Images (B, C, H, W) -> every token after the final norm (B, N, d)."""
        tokens, self.moe_loss = self.encoder(x)
        return tokens

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens -> logits; pre_logits: the pooled features the head reads (the dummy patch,
        the last token)."""
        pooled = x[:, -1]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.cfg = self.cfg.replace(num_classes=max(num_classes, 1))
        self.head = build_head(self.cfg) if num_classes else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth, for timm's layer-wise learning-rate decay."""
        return {"stem": r"^encoder\.patch_embed",
                "blocks": [(r"^encoder\.layers\.(\d+)", None), (r"^encoder\.norm", (99999,))]}


def checkpoint_filter(state: dict, model: TimmMLiT) -> dict:
    """An export's weights for a TimmMLiT: an encoder-only export's keys go under `encoder.`,
    and a head the file lacks keeps the model's initialisation."""
    if not any(k.startswith("encoder.") for k in state):
        state = {f"encoder.{k}": v for k, v in state.items()}
    own = model.state_dict()
    return {**{k: v for k, v in own.items() if k.startswith("head.")}, **state}


def pretrained_cfg(name: str, num_classes: int) -> dict:
    size = model_config(name).image_size
    cifar = INFO["cifar100"]
    return {"url": "", "num_classes": num_classes, "input_size": (3, size, size),
            "fixed_input_size": True, "crop_pct": 1.0, "interpolation": "bilinear",
            "mean": cifar.mean, "std": cifar.std,
            "first_conv": "encoder.patch_embed.proj", "classifier": "head",
            "license": "apache-2.0"}


default_cfgs: dict = {}  # timm's register_model reads a model module's default_cfgs


def register() -> bool:
    """Put every mLiT in timm's registry; False (and nothing done) without timm."""
    if importlib.util.find_spec("timm") is None:
        return False
    try:
        from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
    except ImportError:  # a timm too old or broken for this torch: mlit works without it
        return False

    tagged = {}
    for name in CONFIGS:
        tagged[f"{name}.untrained"] = pretrained_cfg(name, 100)
        tagged[f"{BACKBONE_PREFIX}{name}.untrained"] = pretrained_cfg(name, 0)
    default_cfgs.update(generate_default_cfgs(tagged))
    for name in CONFIGS:
        for variant, classes in ((name, 100), (BACKBONE_PREFIX + name, 0)):
            register_model(builder(variant, name, classes, build_model_with_cfg))
    return True


def builder(variant: str, name: str, default_classes: int, build):
    def create(pretrained: bool = False, **kwargs) -> TimmMLiT:
        kwargs.setdefault("num_classes", default_classes)
        return build(TimmMLiT, variant, pretrained, pretrained_filter_fn=checkpoint_filter,
                     name=name, **kwargs)

    create.__name__ = variant
    create.__qualname__ = variant
    create.__module__ = __name__
    return create
