"""Named configurations (paper Table 1 and 2) and the factories that build every model: by
registry name (`create_model`, `create_mae`) and by kind of stage (`module_for`)."""

from __future__ import annotations

from torch import nn

from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiT, MLiTEncoder
from mlit.model.mae import MaskedAutoEncoder
from mlit.model.stage_kinds import CLASSIFIERS, STAGE_KINDS

# what a file can hold: a stage kind's module (mlit/model/stage_kinds.py) or, for an
# encoder-only export, the encoder alone
KINDS = (*STAGE_KINDS, "encoder")
CLASSIFIER_KINDS = CLASSIFIERS

# Only what differs from MLiTConfig's defaults (which are mLiT-S with the 0.34M decoder).
CONFIGS: dict[str, dict] = {
    "mlit_s": dict(embed_dim=144, depth=15, num_heads=8, num_kv_groups=4,
                   hidden_first=144, hidden_last=72),
    "mlit_xs": dict(embed_dim=128, depth=12, num_heads=8, num_kv_groups=4,
                    hidden_first=96, hidden_last=32),
    "mlit_xxs": dict(embed_dim=108, depth=9, num_heads=6, num_kv_groups=3,
                     hidden_first=81, hidden_last=27),
    # small sizes for the CPU: the quickstart on digits, and unit tests
    "mlit_tiny": dict(image_size=12, embed_dim=64, depth=3, num_heads=4, num_kv_groups=2,
                      hidden_first=64, hidden_last=32, decoder_embed_dim=48, decoder_depth=1,
                      decoder_num_heads=4, decoder_num_kv_groups=2, decoder_hidden=32),
    "mlit_micro": dict(image_size=12, embed_dim=16, depth=3, num_heads=4, num_kv_groups=2,
                       hidden_first=8, hidden_last=4, decoder_embed_dim=16, decoder_depth=1,
                       decoder_num_heads=4, decoder_num_kv_groups=2, decoder_hidden=8),
}


def model_config(name: str, **overrides) -> MLiTConfig:
    """The named configuration with fields replaced; unknown names and fields raise."""
    if name not in CONFIGS:
        raise ValueError(f"name={name!r}: unknown model; choose one of {', '.join(CONFIGS)}")
    return MLiTConfig().replace(**{**CONFIGS[name], **overrides})


def create_model(name: str, num_classes: int = 100, **overrides) -> MLiT:
    """An mLiT classifier, e.g. create_model('mlit_xs', num_classes=10, head='mlp')."""
    return MLiT(model_config(name, num_classes=num_classes, **overrides))


def create_mae(name: str, **overrides) -> MaskedAutoEncoder:
    """An mmLiT masked auto-encoder around the named encoder."""
    return MaskedAutoEncoder(model_config(name, **overrides))


def module_for(kind: str, cfg: MLiTConfig) -> nn.Module:
    """The module a stage of `kind` trains, or a file of that kind holds (KINDS)."""
    if kind == "encoder":
        return MLiTEncoder(cfg)
    return STAGE_KINDS[kind].module(cfg)
