"""mLiT inside timm (docs/timm.md): every named mLiT (mlit_s, mlit_xs, mlit_xxs, and the CPU
sizes mlit_tiny, mlit_micro) and its MAE encoder as a feature backbone (mmlit_s, ... : no head,
num_classes=0) in timm's registry, with timm's model interface. mlit/__init__.py
registers them when timm is imported:

    model = timm.create_model("mlit_s", num_classes=10)       # mlit.create_model's parameters
    model = timm.create_model("mlit_s", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file="runs/x/model.safetensors"))

`TimmMLiT` is the classifier with timm's conventions: forward returns the logits alone, and
the mixture-of-experts loss of the last eager forward is `model.moe_loss`, for a training
loop that adds it (loss = CE + model.cfg.moe_loss_weight * model.moe_loss, as mlit's runner
does). Like timm's ViTs, forward_features gives every token (B, 145, d), and the pooled
feature is the dummy patch (`global_pool='token'`, the last token; 'avg' averages the image
patches; '' keeps every token); forward_intermediates and features_only give the image
patches as a 12 x 12 map, the dummy patch (the one prefix token) dropped.

A file from `python -m mlit.export` (or a run's checkpoint) loads through
`pretrained_cfg_overlay=dict(file=...)`: read and checked by mlit's reader, its weights fitted
to the model with one-line errors, and its data config (normalisation, image size, classes,
class names) becomes the model's pretrained_cfg, so timm.data.resolve_data_config gives the
transform the model was trained with. Without a file, pretrained_cfg describes the paper's
input: CIFAR-100 images resized whole (bilinear) to image_size, CIFAR-100's statistics.
"""

import contextlib
import dataclasses

import torch
from torch import nn

from mlit.data.catalogue import INFO
from mlit.files.modelfile import read as read_model_file
from mlit.files.weights import describe, expected_state, first_mismatch
from mlit.model.capture import capturing_graph
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiT, MLiTEncoder, build_head
from mlit.model.registry import CLASSIFIER_KINDS, CONFIGS, model_config
from mlit.model.stage_kinds import STAGE_KINDS

BACKBONE_PREFIX = "m"  # mmlit_s: the MAE-pre-trained (mmLiT) encoder of mlit_s, no head
POOLS = ("token", "avg", "")  # the dummy patch, the mean of the image patches, every token
FIELDS = {f.name for f in dataclasses.fields(MLiTConfig)}
# timm's keyword for an MLiTConfig field
TIMM_NAMES = {"in_chans": "in_channels", "drop_path_rate": "drop_path"}


def check_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r}: must be 0 (no head) or a positive "
                         "number of classes")
    return num_classes


def check_pool(global_pool) -> str:
    if global_pool not in POOLS:
        raise ValueError(f"global_pool={global_pool!r}: mLiT pools 'token' (the dummy patch, "
                         "its default), 'avg' (the image patches' mean) or '' (every token)")
    return global_pool


class TimmMLiT(MLiT):
    """An mLiT classifier with timm's model interface; num_classes=0 leaves the head out, so
    forward gives the pooled features."""

    num_prefix_tokens = 1  # the dummy patch, last in mLiT's token order

    def __init__(self, name: str = "mlit_s", num_classes: int = 100, in_chans: int = 3,
                 img_size=None, global_pool: str = "token", device=None, dtype=None,
                 **overrides):
        unknown = sorted(set(overrides) - FIELDS - set(TIMM_NAMES))
        if unknown:
            raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r} "
                            "(mLiT takes timm's num_classes, in_chans, img_size, global_pool, "
                            "drop_path_rate, device, dtype and MLiTConfig's fields)")
        settings = {TIMM_NAMES.get(k, k): v for k, v in overrides.items()}
        settings.update(num_classes=max(check_classes(num_classes), 1), in_channels=in_chans)
        if img_size is not None:  # timm passes its pretrained_cfg's (H, W)
            sides = {img_size} if isinstance(img_size, int) else set(img_size)
            if len(sides) != 1:
                raise ValueError(f"img_size={img_size}: mLiT takes square images")
            settings["image_size"] = sides.pop()
        with torch.device(device) if device is not None else contextlib.nullcontext():
            super().__init__(model_config(name, **settings))
            if num_classes == 0:
                self.head = nn.Identity()
        if dtype is not None:
            self.to(dtype)
        self.num_classes = num_classes
        self.global_pool = check_pool(global_pool)
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = self.cfg.embed_dim
        self.feature_info = [dict(num_chs=self.cfg.embed_dim, reduction=self.cfg.patch_size,
                                  module=f"encoder.layers.{i}") for i in range(self.cfg.depth)]
        self.moe_loss = torch.zeros(())  # the mixture-of-experts loss of the last forward

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> every token after the final norm (B, N, d)."""
        tokens, moe_loss = self.encoder(x)
        if not torch.jit.is_scripting():
            self.keep_moe_loss(moe_loss)
        return tokens

    @torch.jit.unused
    def keep_moe_loss(self, moe_loss: torch.Tensor) -> None:
        if not capturing_graph():  # a recorded graph returns its outputs, it keeps nothing
            self.moe_loss = moe_loss

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) starts without the last forward's loss and its graph."""
        state = dict(super().__getstate__())
        state["moe_loss"] = torch.zeros(())
        return state

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, d) -> logits; pre_logits: the pooled features the head reads."""
        if not torch.jit.is_scripting():
            self.check_width(x)
        if self.global_pool == "token":
            x = x[:, -1]
        elif self.global_pool == "avg":
            x = x[:, :-1].mean(dim=1)
        return x if pre_logits else self.head(x)

    @torch.jit.unused
    def check_width(self, x: torch.Tensor) -> None:
        if capturing_graph():  # a graph's shapes are symbols, checked when it runs
            return
        if x.dim() != 3 or x.shape[-1] != self.num_features:
            raise ValueError(f"forward_head takes the tokens of forward_features (B, N, "
                             f"{self.num_features}); got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        """A new head for num_classes (0: none), on the model's device and dtype; the pooling
        stays unless global_pool names another."""
        self.num_classes = check_classes(num_classes)
        if global_pool is not None:
            self.global_pool = check_pool(global_pool)
        self.cfg = self.cfg.replace(num_classes=max(num_classes, 1))
        like = self.encoder.patch_embed.proj.weight
        head = build_head(self.cfg).to(like.device, like.dtype) if num_classes else nn.Identity()
        self.head = head.train(self.training)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth, for timm's layer-wise learning-rate decay."""
        return {"stem": r"^encoder\.patch_embed",
                "blocks": [(r"^encoder\.layers\.(\d+)", None), (r"^encoder\.norm", (99999,))]}

    def forward_intermediates(self, x: torch.Tensor, indices=None,
                              return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """The tokens after the layers `indices` picks (timm's feature_take_indices: None
        all, n the last n, a list those), as a (B, d, 12, 12) map of the image patches
        ('NCHW') or tokens ('NLC'), the dummy patch dropped (returned beside each when
        return_prefix_tokens); with the final norm when `norm`."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: must be NCHW or NLC")
        take, last = feature_take_indices(len(self.encoder.layers), indices)
        x = self.encoder.patch_embed(x)
        taps, moe_loss = [], x.new_zeros((), dtype=torch.float32)
        layers = self.encoder.layers[:last + 1] if stop_early else self.encoder.layers
        for i, layer in enumerate(layers):
            x, aux = layer(x)
            moe_loss = moe_loss + aux
            if i in take:
                taps.append(self.encoder.norm(x) if norm else x)
        grid = self.cfg.grid_size
        patches = [t[:, :-1] for t in taps]
        if output_fmt == "NCHW":
            patches = [t.reshape(t.shape[0], grid, grid, -1).permute(0, 3, 1, 2).contiguous()
                       for t in patches]
        if return_prefix_tokens:
            patches = list(zip(patches, [t[:, -1:] for t in taps]))
        if intermediates_only:
            return patches
        self.keep_moe_loss(moe_loss)
        return self.encoder.norm(x), patches

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the layers after the last one `indices` picks (and the final norm, the
        head); returns the indices kept."""
        from timm.models._features import feature_take_indices

        take, last = feature_take_indices(len(self.encoder.layers), indices)
        self.encoder.layers = self.encoder.layers[:last + 1]
        self.feature_info = self.feature_info[:last + 1]
        if prune_norm:
            self.encoder.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


def checkpoint_filter(state: dict, model: TimmMLiT) -> dict:
    """A file's weights for a TimmMLiT: an encoder-only export's keys go under `encoder.`,
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


def file_overlay(file, name: str, settings: dict, backbone: bool) -> dict:
    """The pretrained_cfg a model file gives the `name` model built with `settings`: its
    weights (checked against that model, one line naming both; a backbone takes the
    encoder's alone) and its data config."""
    mf = read_model_file(file)  # CheckpointError: missing, a folder, ONNX, damaged
    fields = {TIMM_NAMES.get(k, k): v for k, v in settings.items()}
    if settings.get("img_size") is not None:
        fields["image_size"] = settings["img_size"]
    target = model_config(name, **{k: v for k, v in fields.items()
                                   if k in FIELDS and k != "num_classes"})
    target = target.replace(num_classes=mf.config.num_classes)
    problem = first_mismatch(expected_state(lambda: MLiTEncoder(target)), mf.encoder_state(),
                             "encoder.")
    if problem:
        raise ValueError(f"{file} holds {mf.description}, not {describe(name, target)}: "
                         f"its weights do not fit ({problem})")
    normalization = mf.normalization or {}
    dataset = ((mf.recipe or {}).get("data") or {}).get("dataset")
    info = INFO.get(dataset, INFO["cifar100"])
    # timm's classifier interface is MLiT's head (a probe's BatchNorm head is not timm's)
    classifier = mf.kind in CLASSIFIER_KINDS and STAGE_KINDS[mf.kind].module is MLiT \
        and not backbone
    overlay = {"state_dict": mf.state if classifier else mf.encoder_state(),
               "input_size": (mf.config.in_channels, mf.config.image_size,
                              mf.config.image_size),
               "mean": tuple(normalization.get("mean", info.mean)),
               "std": tuple(normalization.get("std", info.std))}
    if classifier:
        overlay["num_classes"] = mf.config.num_classes
    if mf.class_names:
        overlay["label_names"] = tuple(mf.class_names)
    return overlay


def builder(variant: str, name: str, default_classes: int, build):
    def create(pretrained: bool = False, **kwargs) -> TimmMLiT:
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        if pretrained and overlay.get("file"):
            overlay = {**file_overlay(overlay.pop("file"), name, kwargs,
                                      backbone=default_classes == 0), **overlay}
        # a file's classifier keeps its classes unless num_classes asks for other ones
        kwargs.setdefault("num_classes", overlay.get("num_classes", default_classes))
        if kwargs.get("features_only"):  # as timm's ViTs: the last 3 layers' patch maps
            kwargs.setdefault("feature_cfg", dict(
                feature_cls="getter", out_indices=kwargs.pop("out_indices", 3)))
        return build(TimmMLiT, variant, pretrained, pretrained_filter_fn=checkpoint_filter,
                     pretrained_cfg_overlay=overlay or None, name=name, **kwargs)

    create.__name__ = variant
    create.__qualname__ = variant
    create.__module__ = __name__
    return create


default_cfgs: dict = {}  # timm's register_model reads a model module's default_cfgs


def register() -> None:
    """Put every mLiT in timm's registry (once)."""
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

    if default_cfgs:
        return
    tagged = {}
    for name in CONFIGS:
        tagged[f"{name}.untrained"] = pretrained_cfg(name, 100)
        tagged[f"{BACKBONE_PREFIX}{name}.untrained"] = pretrained_cfg(name, 0)
    default_cfgs.update(generate_default_cfgs(tagged))
    for name in CONFIGS:
        for variant, classes in ((name, 100), (BACKBONE_PREFIX + name, 0)):
            register_model(builder(variant, name, classes, build_model_with_cfg))
