"""FLOPs per image, worked out from the configuration and counted on the real model to check
it, and the parameters a token uses.

`forward_flops` and `training_flops` ask the stage kind's module for its matrix products in
closed form (its `matmul_flops`, built from mlit/model/closed_form.py): microseconds a shape,
so a shape sweep's plan (mlit/shape) works out every run's epochs at once. `counted_forward_flops`
and `counted_training_flops` count the same on the real model with
`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; only matrix products
are counted, as is usual: the element-wise work of norms, activations and softmax is left
out), on the meta device: shapes without values, no arithmetic, about half a second for
mLiT-S. tests/test_flops.py holds the two equal. Two choices make the count the model's
arithmetic:
- the MoE runs the sparse dispatch's products, each token multiplied only by the k experts it
  is routed to (on the meta device, `meta_expert_mixture` in mlit/model/mixtures.py: the same
  products as the `torch` reference, whatever the routing; the Triton kernel is a custom op
  the counter cannot see into);
- attention runs SDPA's math backend, whose matrix products the counter sees (the fused CPU
  and GPU kernels compute the same products).
`tools/param_count.py` prints these per model; the shape sweep turns training FLOPs per image
into the compute axis of its scaling laws.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mlit.model.config import MLiTConfig
from mlit.model.moe import MoELayer
from mlit.model.registry import module_for
from mlit.model.stage_kinds import STAGE_KINDS


def count(fn) -> int:
    """FLOPs of the matrix products run by fn()."""
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def counting_model(cfg: MLiTConfig, kind: str):
    with torch.device("meta"):
        return module_for(kind, cfg.replace(moe_impl="torch"))


def example_batch(cfg: MLiTConfig, kind: str, batch: int) -> torch.Tensor:
    views = STAGE_KINDS[kind].views
    return torch.randn(batch * views, cfg.in_channels, cfg.image_size, cfg.image_size,
                       device="meta")


def scalar_output(out) -> torch.Tensor:
    """Something to call backward() on: the loss, or logits and aux loss summed."""
    if isinstance(out, tuple):
        return out[0].float().sum() + out[1]
    return out.loss


def per_image(cfg: MLiTConfig, kind: str, training: bool, batch: int) -> float:
    """The stage kind's module's matrix products for `batch` images (each of its views)."""
    row = STAGE_KINDS[kind]
    return row.module.matmul_flops(cfg, batch * row.views, training) / batch


def forward_flops(cfg: MLiTConfig, kind: str = "finetune", batch: int = 2) -> float:
    """Forward FLOPs per image in evaluation mode (the classifier by default)."""
    return per_image(cfg, kind, False, batch)


def training_flops(cfg: MLiTConfig, kind: str, batch: int = 2) -> float:
    """Forward + backward FLOPs per training image of a stage kind (pretrain: the MAE on
    its visible patches and the decoder; simclr: both views; else the classifier)."""
    return per_image(cfg, kind, True, batch)


def counted_forward_flops(cfg: MLiTConfig, kind: str = "finetune", batch: int = 2) -> float:
    """forward_flops, counted on the model built on the meta device."""
    model = counting_model(cfg, kind).eval()
    images = example_batch(cfg, kind, batch)
    with torch.no_grad():
        flops = count(lambda: model(images))
    return flops / batch


def counted_training_flops(cfg: MLiTConfig, kind: str, batch: int = 2) -> float:
    """training_flops, counted on the model built on the meta device."""
    model = counting_model(cfg, kind).train()
    images = example_batch(cfg, kind, batch)
    return count(lambda: scalar_output(model(images)).backward()) / batch


def active_params(cfg: MLiTConfig) -> int:
    """Parameters the classifier uses for one token: all but the weights of the experts
    the token is not routed to (E - k per MoE layer), the figure MoE papers report."""
    with torch.device("meta"):
        model = module_for("finetune", cfg)
    total = sum(p.numel() for p in model.parameters())
    for layer in model.modules():
        if isinstance(layer, MoELayer):
            own = layer.experts.expert_weight[0].numel() + layer.experts.expert_bias[0].numel()
            total -= (layer.num_experts - layer.gate.top_k) * own
    return total
