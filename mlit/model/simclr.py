"""Contrastive pre-training of the mLiT encoder: SimCLR (Chen et al. 2020) with the InfoNCE
(NT-Xent) loss, one of the zoo's pre-training variants (docs/zoo.md).

Two augmented views of every image go through the encoder; the dummy-patch token passes a
projection MLP, and each view must pick out its twin among the other 2B - 1 projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlit.model import closed_form
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiTEncoder


@dataclass
class SimCLROutput:
    loss: torch.Tensor  # InfoNCE + w_moe * L_moe
    contrastive_loss: torch.Tensor
    moe_loss: torch.Tensor


def info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """z (2B, p): rows i and i + B are two views of one image. Cross-entropy of each row's
    cosine similarities (self excluded) against its twin."""
    z = F.normalize(z.float(), dim=-1)
    n = z.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    twins = (torch.arange(n, device=z.device) + n // 2) % n
    return F.cross_entropy(sim, twins)


class SimCLR(nn.Module):
    def __init__(self, cfg: MLiTConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MLiTEncoder(cfg)
        d = cfg.embed_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.ReLU(),
                                       nn.Linear(d, cfg.simclr_projection_dim))

    def forward(self, views: torch.Tensor) -> SimCLROutput:
        """views (2B, C, H, W): the first B and the last B are the two views, in order."""
        if views.shape[0] % 2:
            raise ValueError("SimCLR needs an even batch of two views per image")
        tokens, moe_loss = self.encoder(views)
        contrastive = info_nce(self.projector(tokens[:, -1]), self.cfg.simclr_temperature)
        loss = contrastive + self.cfg.moe_loss_weight * moe_loss
        return SimCLROutput(loss, contrastive, moe_loss)

    # the runner's questions (as MLiT's); evaluation views come from a seed the runner fixes
    EVAL_KEYS = ("loss",)

    def loss_parts(self, out: SimCLROutput, targets=None, label_smoothing: float = 0.0) -> dict:
        return {"loss": out.loss, "contrastive": out.contrastive_loss, "moe": out.moe_loss}

    def eval_parts(self, out: SimCLROutput, targets=None) -> dict:
        return {"loss": out.contrastive_loss}

    def eval_forward(self, views: torch.Tensor, generator: torch.Generator) -> SimCLROutput:
        return self(views)

    @staticmethod
    def matmul_flops(cfg: MLiTConfig, views: int, training: bool) -> int:
        """Every view through the encoder and the projection MLP, then each view's similarity
        to every other (mlit/model/closed_form.py)."""
        d, p, mm = cfg.embed_dim, cfg.simclr_projection_dim, closed_form.mm
        body = closed_form.encoder_layers(views, cfg.num_patches + 1, cfg, training)
        body += mm(views, d, d) + mm(views, d, p) + mm(views, p, views)
        return closed_form.with_backward(body, closed_form.patch_products(views, cfg), training)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.patch_embed.pos_embed"}
