"""mLiT: patch embedding with the dummy patch, MoE transformer layers with depth-wise scaling
and expert stages, and the classifier that reads the dummy patch (docs/architecture.md,
sections 1-7).

    python -c "import mlit, torch; m = mlit.create_model('mlit_s'); print(m(torch.randn(2, 3, 36, 36))[0].shape)"
"""

import torch
import torch.nn.functional as F
from torch import nn

from mlit.model import closed_form
from mlit.model.attention import GroupedQueryAttention
from mlit.model.capture import capturing_graph
from mlit.model.config import MLiTConfig
from mlit.model.dropout import Dropout
from mlit.model.moe import dense_mlp_width, moe_layer


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), patches in row-major order."""
    B, C, H, W = imgs.shape
    p = patch_size
    x = imgs.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p), the inverse of patchify."""
    B, L, _ = patches.shape
    p, g = patch_size, int(round(L**0.5))
    x = patches.reshape(B, g, g, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, channels, g * p, g * p)


class PatchEmbedding(nn.Module):
    """Section 1: 3x3 patches, a 145th all-zero dummy patch, Linear(27 -> d) without bias, plus
    a learnable positional embedding (145, d)."""

    def __init__(self, cfg: MLiTConfig):
        super().__init__()
        self.patch_size, self.image_size, self.in_channels = (
            cfg.patch_size, cfg.image_size, cfg.in_channels)
        self.proj = nn.Linear(cfg.patch_dim, cfg.embed_dim, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_images(imgs)
        patches = patchify(imgs, self.patch_size)  # (B, 144, 27)
        dummy = patches.new_zeros(patches.shape[0], 1, patches.shape[2])
        patches = torch.cat([patches, dummy], dim=1)  # (B, 145, 27), dummy last
        return self.proj(patches) + self.pos_embed  # (B, 145, d)

    @torch.jit.unused
    def check_images(self, imgs: torch.Tensor) -> None:
        """The images the model was built for, or a ValueError that says what it takes (a
        recorded graph checks its inputs' shapes when it runs)."""
        if capturing_graph():
            return
        C, S = self.in_channels, self.image_size
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != (C, S, S):
            raise ValueError(f"the model takes images (B, {C}, {S}, {S}) (in_channels={C}, "
                             f"image_size={S}); got {tuple(imgs.shape)}")
        if not imgs.is_floating_point():  # e.g. uint8 pixels straight from a decoder
            raise ValueError(f"the model takes floating-point images (pixels scaled to [0, 1], "
                             f"then normalised with the run's mean and std); got {imgs.dtype}")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a residual branch for whole images, rescale the survivors."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], 1, 1).bernoulli_(1 - p)  # tokens (B, N, d)
    return x * keep / (1 - p)


class DenseMLP(nn.Module):
    """The dense ViT's feed-forward block, Linear-GELU-Linear, sized to hold as many
    parameters as the MoE layer it replaces (gates, the experts' own and shared projections)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, dropout: float, cfg: MLiTConfig):
        super().__init__()
        width = dense_mlp_width(dim, hidden, num_experts, cfg)
        self.net = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim),
                                 Dropout(dropout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x.new_zeros((), dtype=torch.float32)


class EncoderLayer(nn.Module):
    """Pre-norm layer: x = x + GQA(LN(x)); x = x + MoE(LN(x)) (section 2)."""

    def __init__(self, dim: int, num_heads: int, num_kv_groups: int, hidden: int,
                 num_experts: int, cfg: MLiTConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GroupedQueryAttention(dim, num_heads, num_kv_groups)
        self.norm2 = nn.LayerNorm(dim)
        if cfg.ffn == "mlp":
            self.mlp = DenseMLP(dim, hidden, num_experts, cfg.expert_dropout, cfg)
        else:
            self.moe = moe_layer(dim, hidden, num_experts, cfg)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        if hasattr(self, "mlp"):  # resolved when TorchScript compiles the layer
            y, aux = self.mlp(self.norm2(x))
        else:
            y, aux = self.moe(self.norm2(x))
        return x + drop_path(y, self.drop_path_rate, self.training), aux


class MLiTEncoder(nn.Module):
    """Patch embedding, L MoE layers with depth-wise hidden sizes and expert stages, final LN."""

    def __init__(self, cfg: MLiTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbedding(cfg)
        hidden, experts = cfg.hidden_sizes(), cfg.experts_per_layer()
        # stochastic depth grows linearly with depth, as in DeiT/MAE
        rates = [cfg.drop_path * l / max(cfg.depth - 1, 1) for l in range(cfg.depth)]
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.embed_dim, cfg.num_heads, cfg.num_kv_groups, hidden[l],
                         experts[l], cfg, rates[l])
            for l in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, d) through every layer and the final LN; returns (tokens, L_moe)."""
        moe_loss = x.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            x, aux = layer(x)
            moe_loss = moe_loss + aux
        return self.norm(x), moe_loss

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_layers(self.patch_embed(imgs))


def build_head(cfg: MLiTConfig) -> nn.Module:
    if cfg.head == "mlp":  # the zoo's MLP head: Linear(d, 256) + ReLU + Linear(256, C)
        return nn.Sequential(nn.Linear(cfg.embed_dim, cfg.head_hidden), nn.ReLU(),
                             nn.Linear(cfg.head_hidden, cfg.num_classes))
    return nn.Linear(cfg.embed_dim, cfg.num_classes, bias=cfg.head_bias)


class MLiT(nn.Module):
    """The classifier: the encoder output at the dummy patch (the last token) feeds the head."""

    def __init__(self, cfg: MLiTConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MLiTEncoder(cfg)
        self.head = self.new_head(cfg)

    @staticmethod
    def new_head(cfg: MLiTConfig) -> nn.Module:
        """The head, freshly initialised (the runner draws it again from a head seed)."""
        return build_head(cfg)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """imgs (B, C, H, W) -> (logits (B, C), L_moe)."""
        tokens, moe_loss = self.encoder(imgs)
        return self.head(tokens[:, -1]), moe_loss

    # What the runner asks of each model it trains (mlit/training/engine.py), from forward's
    # output: the objective and its parts, the losses an evaluation averages, and, for a
    # classifier, its predicted classes. The MAE and SimCLR answer the same.
    EVAL_KEYS = ("loss",)

    def loss_parts(self, out, targets: torch.Tensor, label_smoothing: float = 0.0) -> dict:
        """CE + w_moe * L_moe."""
        logits, moe = out
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        return {"loss": ce + self.cfg.moe_loss_weight * moe, "ce": ce, "moe": moe}

    def eval_parts(self, out, targets: torch.Tensor) -> dict:
        return {"loss": F.cross_entropy(out[0].float(), targets)}

    def eval_forward(self, imgs: torch.Tensor, generator: torch.Generator):
        return self(imgs)  # nothing random in evaluation mode

    def predictions(self, out) -> torch.Tensor:
        return out[0].argmax(1)

    @staticmethod
    def matmul_flops(cfg: MLiTConfig, images: int, training: bool) -> int:
        """FLOPs of the matrix products for a batch of `images` (mlit/model/closed_form.py):
        every token through the layers, the dummy's through the head."""
        body = closed_form.encoder_layers(images, cfg.num_patches + 1, cfg, training)
        return closed_form.with_backward(body + closed_form.head_products(images, cfg),
                                         closed_form.patch_products(images, cfg), training)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.patch_embed.pos_embed"}

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay ids (section 10): embeddings 0, encoder layer i is i+1, the final
        norm and the head are the top, L+1."""
        if name.startswith("encoder.patch_embed"):
            return 0
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2]) + 1
        return self.cfg.depth + 1
