"""FLOPs in closed form: the matrix products of the model's parts, summed as torch's
FlopCounterMode sums them, from the configuration alone. Each stage kind's module adds up its
parts (`matmul_flops`); mlit/model/flops.py asks it, and counts the real model to check.

A shape sweep's plan (mlit/shape/plan.py) needs the training FLOPs of every shape of its star:
counting them on the meta device dispatches some five thousand operations a shape, half a
second, where this arithmetic takes microseconds. tests/test_flops.py holds it to the
counter over every stage kind, sharing arrangement and head, and tests/test_shape.py over
every shape of the shipped sweeps.

The rules the counter follows, written out:
- a product of (m, k) by (k, n) is 2 m k n FLOPs (an nn.Linear's bias and every element-wise
  operation count nothing);
- attention is SDPA's math backend: q k^T and the weighted values, per query head;
- the experts are the sparse dispatch's: each token through the k experts it is routed to
  (docs/architecture.md, section 5), whatever the routing;
- backward runs one product of the same size for each operand that needs a gradient: two for
  a trained product of activations, one where the input needs none (the image patches, a
  frozen encoder's features), none for a frozen encoder.
"""

from __future__ import annotations

from mlit.kernels.arrangements import owns_w2
from mlit.model.config import MLiTConfig
from mlit.model.moe import dense_mlp_width


def mm(m: int, k: int, n: int) -> int:
    """FLOPs of (m, k) @ (k, n)."""
    return 2 * m * k * n


def attention_products(batch: int, seq: int, dim: int, heads: int, groups: int) -> int:
    """Grouped-query attention (section 3) on `batch` sequences of `seq` tokens."""
    tokens, head_dim = batch * seq, dim // heads
    projections = 2 * mm(tokens, dim, dim) + 2 * mm(tokens, dim, groups * head_dim)  # q, o; k, v
    return projections + 2 * batch * heads * mm(seq, head_dim, seq)  # q k^T, then the values


def feed_forward_products(tokens: int, dim: int, hidden: int, experts: int, cfg: MLiTConfig,
                          training: bool) -> int:
    """The MoE layer (sections 4-5): the gate's clean logits (and x Wn while training with
    noise), then the k routed experts' products; or the dense ViT's MLP (cfg.ffn = mlp)."""
    if cfg.ffn == "mlp":
        width = dense_mlp_width(dim, hidden, experts, cfg)
        return mm(tokens, dim, width) + mm(tokens, width, dim)
    gate = mm(tokens, dim, experts) * (2 if training and cfg.noisy_gating else 1)
    pairs = tokens * cfg.top_k
    if owns_w2(cfg.shared):  # W and V shared, each expert its own W2
        return gate + 2 * mm(tokens, dim, hidden) + mm(pairs, hidden, dim)
    return gate + mm(tokens, dim, hidden) + mm(pairs, dim, hidden) + mm(tokens, hidden, dim)


def encoder_layers(batch: int, seq: int, cfg: MLiTConfig, training: bool) -> int:
    """The L encoder layers, depth-wise scaled (section 6), on `seq` tokens an image."""
    attention = attention_products(batch, seq, cfg.embed_dim, cfg.num_heads, cfg.num_kv_groups)
    return sum(attention + feed_forward_products(batch * seq, cfg.embed_dim, hidden, experts,
                                                 cfg, training)
               for hidden, experts in zip(cfg.hidden_sizes(), cfg.experts_per_layer()))


def decoder_products(batch: int, visible: int, cfg: MLiTConfig, training: bool) -> int:
    """The MAE decoder (section 8): the latent's projection, its layers on every token, the
    pixel prediction."""
    seq, dim = cfg.num_patches + 1, cfg.decoder_embed_dim
    layer = (attention_products(batch, seq, dim, cfg.decoder_num_heads,
                                cfg.decoder_num_kv_groups)
             + feed_forward_products(batch * seq, dim, cfg.decoder_hidden,
                                     cfg.decoder_num_experts, cfg, training))
    return (mm(batch * visible, cfg.embed_dim, dim) + cfg.decoder_depth * layer
            + mm(batch * seq, dim, cfg.patch_dim))


def head_products(batch: int, cfg: MLiTConfig) -> int:
    """The classifier's head on the dummy's token (section 7): linear, or the zoo's MLP."""
    if cfg.head == "mlp":
        return mm(batch, cfg.embed_dim, cfg.head_hidden) + mm(batch, cfg.head_hidden,
                                                              cfg.num_classes)
    return mm(batch, cfg.embed_dim, cfg.num_classes)


def patch_products(images: int, cfg: MLiTConfig) -> int:
    """The patch embedding (section 1) of every patch and the dummy."""
    return mm(images * (cfg.num_patches + 1), cfg.patch_dim, cfg.embed_dim)


def with_backward(trained: int, patches: int, training: bool) -> int:
    """A step's FLOPs from its forward's (unchanged in evaluation). Training adds backward:
    a product of the same size for each operand that needs a gradient, the weight's and the
    input's (2) for trained products, the weight's alone (1) for the patch embedding, whose
    images need none."""
    return (3 * trained + 2 * patches) if training else trained + patches
