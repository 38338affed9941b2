"""The architecture's hyper-parameters (docs/architecture.md) as one validated dataclass.

Every number of the architecture is a field here, never a constant in the modules, so a recipe or a test
can change it. `validate()` turns impossible shapes into a ValueError that names the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mlit.kernels.arrangements import SHARED
from mlit.model.dispatch import TRITON_SHARED

HEADS = ("linear", "mlp")
MOE_IMPLS = ("auto", "torch", "dense", "triton")


@dataclass
class MLiTConfig:
    # input and tokens (docs/architecture.md, section 1)
    image_size: int = 36
    patch_size: int = 3
    in_channels: int = 3
    # encoder, sections 2-6 (defaults are mLiT-S)
    embed_dim: int = 144
    depth: int = 15
    num_heads: int = 8
    num_kv_groups: int = 4
    hidden_first: int = 144  # h1, depth-wise scaling
    hidden_last: int = 72  # hL
    expert_stages: tuple[int, ...] = (3, 4, 5)  # experts per stage, stages of equal length
    top_k: int = 2
    expert_dropout: float = 0.1  # dropout on the SwiGLU output
    drop_path: float = 0.0  # stochastic depth (the zoo grid uses 0.1)
    # noisy top-k gating and its auxiliary losses, section 4
    noisy_gating: bool = True
    noise_epsilon: float = 1e-2  # added to softplus(x Wn), as in Shazeer's code, keeps s > 0
    importance_weight: float = 0.01  # w_imp (our reading)
    load_weight: float = 0.01  # w_load (our reading)
    cv_epsilon: float = 1e-10  # added to mean^2 in CV^2
    moe_impl: str = "auto"  # expert dispatch: auto | torch | dense | triton
    # the two of the SwiGLU's projections W (under the swish), V and W2 that a layer's experts
    # share; each expert owns the third (paper Table 9; docs/architecture.md, section 5)
    shared: str = "v_w2"
    # feed-forward block: moe (mLiT), or mlp, a plain GELU MLP of the same parameter count,
    # the dense ViT a user would otherwise pick (the throughput reference)
    ffn: str = "moe"
    # classifier
    num_classes: int = 100
    head: str = "linear"  # linear | mlp (Linear(d, 256) + ReLU + Linear(256, C))
    head_hidden: int = 256
    head_bias: bool = False  # the paper's counts need a bias-free head
    moe_loss_weight: float = 0.5  # coefficient of L_moe in every training loss
    # MAE decoder and loss, section 8
    decoder_embed_dim: int = 108
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    decoder_num_kv_groups: int = 3
    decoder_hidden: int = 72
    decoder_num_experts: int = 3
    mask_ratio: float = 0.75
    unmasked_loss_weight: float = 0.1
    norm_pix_loss: bool = False  # MAE's per-patch normalised target; off in the paper
    # SimCLR pre-training (zoo variant): projection MLP width and InfoNCE temperature
    simclr_projection_dim: int = 128
    simclr_temperature: float = 0.2

    def __post_init__(self) -> None:
        self.check_types()
        self.expert_stages = tuple(self.expert_stages)
        self.validate()

    def check_types(self) -> None:
        """Every field holds a value of its declared type (before any arithmetic on it)."""
        for f in dataclasses.fields(self):
            value, declared = getattr(self, f.name), str(f.type)
            if declared == "int":
                ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif declared == "float":
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(value))
                want = "a finite number"
            elif declared == "bool":
                ok, want = isinstance(value, bool), "true or false"
            elif declared == "str":
                ok, want = isinstance(value, str), "a string"
            else:  # tuple[int, ...]
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(e, int) and not isinstance(e, bool) for e in value)
                want = "a list of integers"
            if not ok:
                raise ValueError(f"{f.name}={value!r}: must be {want}")

    # -- derived sizes -------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Image patches, without the dummy patch."""
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.in_channels

    def hidden_sizes(self) -> list[int]:
        """Depth-wise scaling (section 6): the hidden size falls linearly from h1 to hL,

            h_l = h1 - floor((h1 - hL) * l / (L - 1)),   l = 0 .. L-1.

        The other reading, hL + floor((h1 - hL) * (L - 1 - l) / (L - 1)), rounds every
        in-between layer one lower; that reading gives classifiers of 2.37M / 0.66M, off the
        paper's 2.38M / 0.67M (Table 7), while this one gives every figure of the paper.
        The parameter count decides (docs/architecture.md, Readings).
        """
        L, h1, hL = self.depth, self.hidden_first, self.hidden_last
        if L == 1:
            return [h1]
        return [h1 - ((h1 - hL) * l) // (L - 1) for l in range(L)]

    def experts_per_layer(self) -> list[int]:
        """Expert stages (section 6): the layers split into len(expert_stages) equal stages."""
        S = len(self.expert_stages)
        return [self.expert_stages[l * S // self.depth] for l in range(self.depth)]

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("image_size", "patch_size", "in_channels", "embed_dim", "depth",
                     "num_heads", "num_kv_groups", "top_k", "num_classes", "head_hidden",
                     "decoder_embed_dim", "decoder_depth", "decoder_num_heads",
                     "decoder_num_kv_groups", "decoder_num_experts",
                     "simclr_projection_dim"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name,
                 "must be a positive integer")
        need(self.hidden_first >= 1, "hidden_first", "hidden size must be at least 1")
        need(self.hidden_last >= 1, "hidden_last", "hidden size must be at least 1")
        need(self.decoder_hidden >= 1, "decoder_hidden", "hidden size must be at least 1")
        need(self.image_size % self.patch_size == 0, "image_size",
             f"must be divisible by patch_size={self.patch_size}")
        need(self.embed_dim % self.num_heads == 0, "embed_dim",
             f"must be divisible by num_heads={self.num_heads}")
        need(self.num_heads % self.num_kv_groups == 0, "num_heads",
             f"must be divisible by num_kv_groups={self.num_kv_groups}")
        need(self.decoder_embed_dim % self.decoder_num_heads == 0, "decoder_embed_dim",
             f"must be divisible by decoder_num_heads={self.decoder_num_heads}")
        need(self.decoder_num_heads % self.decoder_num_kv_groups == 0, "decoder_num_heads",
             f"must be divisible by decoder_num_kv_groups={self.decoder_num_kv_groups}")
        need(1 <= len(self.expert_stages) <= self.depth, "expert_stages",
             f"needs 1 to depth={self.depth} stages")
        need(all(e >= 1 for e in self.expert_stages), "expert_stages",
             "every stage needs at least one expert")
        need(self.top_k <= min(self.expert_stages), "top_k",
             f"cannot exceed the fewest experts in a layer ({min(self.expert_stages)})")
        need(self.top_k <= self.decoder_num_experts, "top_k",
             f"cannot exceed decoder_num_experts={self.decoder_num_experts}")
        for name in ("expert_dropout", "drop_path"):
            need(0.0 <= getattr(self, name) < 1.0, name, "must be in [0, 1)")
        kept = int(self.num_patches * (1 - self.mask_ratio)) if 0 <= self.mask_ratio <= 1 else -1
        need(1 <= kept < self.num_patches, "mask_ratio",
             f"must leave at least one of the {self.num_patches} patches visible and one "
             f"masked (keeps {max(kept, 0)})")
        need(self.simclr_temperature > 0, "simclr_temperature", "must be positive")
        need(self.head in HEADS, "head", f"must be one of {', '.join(HEADS)}")
        need(self.moe_impl in MOE_IMPLS, "moe_impl", f"must be one of {', '.join(MOE_IMPLS)}")
        need(self.shared in SHARED, "shared", f"must be one of {', '.join(SHARED)}")
        need(self.moe_impl != "triton" or self.shared in TRITON_SHARED, "moe_impl",
             f"the Triton kernel serves shared={' and '.join(TRITON_SHARED)}; with "
             f"shared={self.shared} each expert owns its W2 (use torch, dense or auto)")
        need(self.ffn in ("moe", "mlp"), "ffn", "must be moe or mlp")
        for name in ("importance_weight", "load_weight", "moe_loss_weight",
                     "unmasked_loss_weight", "noise_epsilon", "cv_epsilon"):
            need(getattr(self, name) >= 0, name, "must be non-negative")

    def replace(self, **overrides) -> MLiTConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown model field; known fields: "
                             f"{', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)
