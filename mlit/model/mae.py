"""mmLiT: masked auto-encoder pre-training of the mLiT encoder (docs/architecture.md, section 8; He et al. 2022).

The steps are named as in MAE: random_masking, forward_encoder, forward_decoder, forward_loss.
The dummy patch is never masked, so the fine-tuned classifier reads a token the encoder saw
in every pre-training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlit.model import closed_form
from mlit.model.config import MLiTConfig
from mlit.model.encoder import EncoderLayer, MLiTEncoder, patchify


@dataclass
class MAEOutput:
    loss: torch.Tensor  # L = L_masked + w_u * L_unmasked + w_moe * L_moe
    masked_loss: torch.Tensor
    unmasked_loss: torch.Tensor
    moe_loss: torch.Tensor
    pred: torch.Tensor  # (B, 144, 27) predicted pixels of every image patch
    mask: torch.Tensor  # (B, 144) 1 where the patch was hidden from the encoder


def kept_patches(n_patches: int, mask_ratio: float) -> int:
    """How many image patches the encoder sees."""
    return int(n_patches * (1 - mask_ratio))


def random_masking(tokens: torch.Tensor, mask_ratio: float, generator=None):
    """Keep a random (1 - mask_ratio) share of the image tokens and always the dummy (last).

    tokens (B, 145, d) -> visible (B, keep + 1, d), mask (B, 144), restore (B, 144) where
    restore undoes the shuffle (MAE's argsort of uniform noise).
    """
    B, n_tokens, d = tokens.shape
    n_patches = n_tokens - 1
    keep = kept_patches(n_patches, mask_ratio)
    noise = torch.rand(B, n_patches, device=tokens.device, generator=generator)
    shuffle = noise.argsort(dim=1)  # ascending: the first `keep` are kept
    restore = shuffle.argsort(dim=1)
    kept = shuffle[:, :keep]
    visible = tokens[:, :n_patches].gather(1, kept.unsqueeze(-1).expand(-1, -1, d))
    visible = torch.cat([visible, tokens[:, n_patches:]], dim=1)  # dummy stays last
    mask = torch.ones(B, n_patches, device=tokens.device)
    mask[:, :keep] = 0
    mask = mask.gather(1, restore)
    return visible, mask, restore


class MAEDecoder(nn.Module):
    """Linear(d -> 108), mask tokens, positions (145, 108), 4 MoE layers, LN, Linear(108 -> 27)."""

    def __init__(self, cfg: MLiTConfig):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.embed = nn.Linear(cfg.embed_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, cfg.decoder_num_heads, cfg.decoder_num_kv_groups,
                         cfg.decoder_hidden, cfg.decoder_num_experts, cfg)
            for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, cfg.patch_dim, bias=False)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor):
        """latent (B, keep + 1, d) -> pixels (B, 144, 27), L_moe of the decoder."""
        x = self.embed(latent)
        B, n_visible, dim = x.shape
        n_patches = restore.shape[1]
        masks = self.mask_token.expand(B, n_patches - (n_visible - 1), dim)
        patches = torch.cat([x[:, :-1], masks], dim=1)  # shuffled order
        patches = patches.gather(1, restore.unsqueeze(-1).expand(-1, -1, dim))  # original order
        x = torch.cat([patches, x[:, -1:]], dim=1) + self.pos_embed  # dummy back at the end
        moe_loss = x.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            x, aux = layer(x)
            moe_loss = moe_loss + aux
        return self.pred(self.norm(x))[:, :-1], moe_loss  # the dummy has no pixels


class MaskedAutoEncoder(nn.Module):
    """mmLiT pre-training model: MLiTEncoder + MAEDecoder. `encoder` loads into MLiT.encoder."""

    def __init__(self, cfg: MLiTConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MLiTEncoder(cfg)
        self.decoder = MAEDecoder(cfg)

    def forward_encoder(self, imgs: torch.Tensor, generator=None):
        tokens = self.encoder.patch_embed(imgs)
        visible, mask, restore = random_masking(tokens, self.cfg.mask_ratio, generator)
        latent, moe_loss = self.encoder.forward_layers(visible)
        return latent, mask, restore, moe_loss

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor):
        return self.decoder(latent, restore)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        """Mean squared error per patch, averaged over masked and over visible patches."""
        target = patchify(imgs, self.cfg.patch_size)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(-1)  # (B, 144)
        visible = 1 - mask
        masked_loss = (per_patch * mask).sum() / mask.sum().clamp(min=1)
        unmasked_loss = (per_patch * visible).sum() / visible.sum().clamp(min=1)
        return masked_loss, unmasked_loss

    def forward(self, imgs: torch.Tensor, generator=None) -> MAEOutput:
        latent, mask, restore, enc_moe = self.forward_encoder(imgs, generator)
        pred, dec_moe = self.forward_decoder(latent, restore)
        masked_loss, unmasked_loss = self.forward_loss(imgs, pred, mask)
        moe_loss = enc_moe + dec_moe
        loss = (masked_loss + self.cfg.unmasked_loss_weight * unmasked_loss
                + self.cfg.moe_loss_weight * moe_loss)
        return MAEOutput(loss, masked_loss, unmasked_loss, moe_loss, pred, mask)

    # the runner's questions (as MLiT's): the loss parts, the evaluation losses, and an
    # evaluation forward whose mask comes from the evaluation's own generator
    EVAL_KEYS = ("loss", "masked", "unmasked")

    def loss_parts(self, out: MAEOutput, targets=None, label_smoothing: float = 0.0) -> dict:
        return {"loss": out.loss, "masked": out.masked_loss, "unmasked": out.unmasked_loss,
                "moe": out.moe_loss}

    def eval_parts(self, out: MAEOutput, targets=None) -> dict:
        return {"loss": out.loss, "masked": out.masked_loss, "unmasked": out.unmasked_loss}

    def eval_forward(self, imgs: torch.Tensor, generator: torch.Generator) -> MAEOutput:
        return self(imgs, generator=generator)

    @staticmethod
    def matmul_flops(cfg: MLiTConfig, images: int, training: bool) -> int:
        """The encoder on the kept patches and the dummy, the decoder on every token
        (mlit/model/closed_form.py)."""
        visible = kept_patches(cfg.num_patches, cfg.mask_ratio) + 1
        body = (closed_form.encoder_layers(images, visible, cfg, training)
                + closed_form.decoder_products(images, visible, cfg, training))
        return closed_form.with_backward(body, closed_form.patch_products(images, cfg), training)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.patch_embed.pos_embed", "decoder.pos_embed", "decoder.mask_token"}
