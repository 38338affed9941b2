"""Linear probing (MAE's main_linprobe protocol): a pre-trained encoder, frozen and always in
evaluation mode, and on its pooled features (the dummy patch after the final norm, what the
fine-tune head reads) a BatchNorm without affine parameters and a linear classifier, the
only weights the probe trains. How good a pre-training is, without changing the encoder."""

from __future__ import annotations

import torch
from torch import nn

from mlit.model import closed_form
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiT


def probe_head(cfg: MLiTConfig) -> nn.Sequential:
    """BatchNorm1d(affine=False) then Linear; the weights start small (std 0.01) as MAE's."""
    linear = nn.Linear(cfg.embed_dim, cfg.num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(cfg.embed_dim, affine=False, eps=1e-6), linear)


class LinearProbe(MLiT):
    """MLiT whose encoder does not train: its parameters need no gradient, `train()` leaves
    it in evaluation mode (no dropout, drop path or gate noise), and its forward builds no
    graph; the mixture-of-experts loss is zero (the probe cannot change the routing)."""

    def __init__(self, cfg: MLiTConfig):
        super().__init__(cfg)
        self.head = self.new_head(cfg)
        self.encoder.requires_grad_(False)

    @staticmethod
    def new_head(cfg: MLiTConfig) -> nn.Module:
        return probe_head(cfg)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens, _ = self.encoder(imgs)
        logits = self.head(tokens[:, -1].float())
        return logits, logits.new_zeros((), dtype=torch.float32)

    @staticmethod
    def matmul_flops(cfg: MLiTConfig, images: int, training: bool) -> int:
        """The frozen encoder's forward in evaluation mode, then the linear head, whose input
        needs no gradient: its backward is the weight's product alone."""
        frozen = (closed_form.patch_products(images, cfg)
                  + closed_form.encoder_layers(images, cfg.num_patches + 1, cfg, training=False))
        head = closed_form.mm(images, cfg.embed_dim, cfg.num_classes)
        return frozen + head * (2 if training else 1)
