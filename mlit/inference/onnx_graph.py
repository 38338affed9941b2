"""The exported ONNX graph, written node by node from a trained model (docs/deploy.md, "The
graph"): plain opset 18, so any ONNX runtime runs it, and lean, so that ONNX Runtime's time goes
to the matrix products.

Tokens flow as one (B*N, d) matrix, so every projection is one GEMM over the batch's tokens.
Every Reshape has a constant target (the batch is its -1): at a fixed image size no shape is
computed at run time. Section by section:

- patch embedding: the image's 3x3 patches (Reshape, Transpose), one Pad that appends the
  all-zero dummy patch, the projection and the positional embedding;
- grouped-query attention: Q, K and V in one GEMM whose columns are laid out per key/value
  group ([the group's r query heads | its key | its value]), so one Transpose and one Split
  give each group its queries stacked as (r*N, hd) rows against its single key and value:
  two batched MatMuls per group, no key or value repeated per head; 1/sqrt(hd) is folded
  into the query weights;
- noisy top-k gating (noise off, as at evaluation) and the experts: the router's columns, the
  shared projection and every expert's own projection in one GEMM; the top-k gate is a
  softmax over the logits at or above the k-th largest (no Scatter); every expert is
  weighted by it (zero for the experts a token was not routed to), the sparse path's numbers;
- the dense ViT's MLP (model.ffn=mlp) where a layer has one instead;
- the head on the dummy patch (the last token), or the final tokens for an encoder alone.

Outputs: `logits` (B, classes) or `tokens` (B, N, d), and `experts` (B, MoE layers, N, k),
the top-k's indices per token.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mlit.kernels.arrangements import ARRANGEMENTS, own_and_common
from mlit.model.encoder import MLiT, MLiTEncoder
from mlit.model.moe import MoELayer

OPSET = 18


class GraphBuilder:
    """Nodes and initialisers of one graph; every value is named after where it is."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def weight(self, name: str, value) -> str:
        from onnx import numpy_helper

        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        array = np.asarray(value)
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype != np.float32:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array.copy(order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, **attrs):
        """One node; its output's name (or names, for several outputs)."""
        from onnx import helper

        names = [name] if outputs == 1 else [f"{name}.{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def reshape(self, x: str, shape: list[int], name: str) -> str:
        return self.op("Reshape", [x, self.weight(f"{name}.shape", shape)], name)


def linear_weights(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W^T (in, out), b) of an nn.Linear, a Gemm's B and C."""
    return layer.weight.detach().t(), None if layer.bias is None else layer.bias.detach()


def gemm(g: GraphBuilder, x: str, w: torch.Tensor, b: torch.Tensor | None, name: str) -> str:
    inputs = [x, g.weight(f"{name}.weight", w)]
    if b is not None:
        inputs.append(g.weight(f"{name}.bias", b))
    return g.op("Gemm", inputs, name)


def layer_norm(g: GraphBuilder, x: str, norm: nn.LayerNorm, name: str) -> str:
    return g.op("LayerNormalization", [x, g.weight(f"{name}.weight", norm.weight),
                                       g.weight(f"{name}.bias", norm.bias)],
                name, axis=-1, epsilon=norm.eps)


# -- section 1: patch embedding with the dummy patch --------------------------------------------
def patch_embedding(g: GraphBuilder, images: str, encoder: MLiTEncoder) -> str:
    cfg = encoder.cfg
    p, side, c = cfg.patch_size, cfg.grid_size, cfg.in_channels
    x = g.reshape(images, [-1, c, side, p, side, p], "patches.grid")
    x = g.op("Transpose", [x], "patches.order", perm=[0, 2, 4, 3, 5, 1])  # (B, h, w, p, q, C)
    x = g.reshape(x, [-1, side * side, p * p * c], "patches")
    # the all-zero dummy patch, appended last
    x = g.op("Pad", [x, g.weight("patches.dummy", [0, 0, 0, 0, 1, 0])], "patches.with_dummy")
    x = g.op("MatMul", [x, g.weight("patch_embed.weight", encoder.patch_embed.proj.weight.t())],
             "patch_embed")
    x = g.op("Add", [x, g.weight("pos_embed", encoder.patch_embed.pos_embed[0])], "embedded")
    return g.reshape(x, [-1, cfg.embed_dim], "tokens.0")  # (B*N, d)


# -- section 3: grouped-query attention -------------------------------------------------------
def grouped_qkv_weights(attn) -> tuple[torch.Tensor, torch.Tensor]:
    """Q, K and V as one (d, G*(r+2)*hd) weight, columns per group g: its query heads
    g*r .. g*r+r-1, then its key, then its value; the queries scaled by 1/sqrt(hd)."""
    G, hd = attn.num_kv_groups, attn.head_dim
    r = attn.num_heads // G
    scale = hd ** -0.5
    q_w = (attn.q_proj.weight * scale).view(G, r, hd, -1)
    q_b = (attn.q_proj.bias * scale).view(G, r, hd)
    k_w, v_w = (p.weight.view(G, 1, hd, -1) for p in (attn.k_proj, attn.v_proj))
    k_b, v_b = (p.bias.view(G, 1, hd) for p in (attn.k_proj, attn.v_proj))
    w = torch.cat([q_w, k_w, v_w], dim=1).reshape(G * (r + 2) * hd, -1)
    b = torch.cat([q_b, k_b, v_b], dim=1).reshape(-1)
    return w.detach().t(), b.detach()


def attention(g: GraphBuilder, x: str, attn, tokens: int, name: str) -> str:
    """(B*N, d) -> (B*N, d): softmax(Q K^T) V per head, each group's r query heads stacked."""
    G, hd = attn.num_kv_groups, attn.head_dim
    r = attn.num_heads // G
    qkv = gemm(g, x, *grouped_qkv_weights(attn), f"{name}.qkv")
    qkv = g.reshape(qkv, [-1, tokens, G, r + 2, hd], f"{name}.qkv.heads")
    qkv = g.op("Transpose", [qkv], f"{name}.qkv.groups", perm=[0, 2, 3, 1, 4])  # (B,G,r+2,N,hd)
    q, k, v = g.op("Split", [qkv, g.weight(f"{name}.split", [r, 1, 1])], f"{name}.qkv.split",
                   outputs=3, axis=2)
    q = g.reshape(q, [-1, G, r * tokens, hd], f"{name}.q")  # the group's heads as rows
    k = g.reshape(k, [-1, G, tokens, hd], f"{name}.k")
    v = g.reshape(v, [-1, G, tokens, hd], f"{name}.v")
    k = g.op("Transpose", [k], f"{name}.k.t", perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [q, k], f"{name}.scores")  # (B, G, r*N, N)
    probs = g.op("Softmax", [scores], f"{name}.probs", axis=-1)
    out = g.op("MatMul", [probs, v], f"{name}.mixed")  # (B, G, r*N, hd)
    out = g.reshape(out, [-1, G, r, tokens, hd], f"{name}.mixed.heads")
    out = g.op("Transpose", [out], f"{name}.mixed.tokens", perm=[0, 3, 1, 2, 4])
    out = g.reshape(out, [-1, attn.num_heads * hd], f"{name}.mixed.flat")
    return gemm(g, out, *linear_weights(attn.o_proj), f"{name}.out")


# -- sections 4-5: the router and the experts ------------------------------------------------------
def top_k_gate(g: GraphBuilder, logits: str, k: int, name: str) -> tuple[str, str]:
    """(gates (T, E): softmax over the k largest logits, 0 elsewhere; indices (T, k))."""
    top, chosen = g.op("TopK", [logits, g.weight(f"{name}.k", [k])], f"{name}.top",
                       outputs=2, axis=1)
    kth = g.op("ReduceMin", [top, g.weight(f"{name}.axis", [1])], f"{name}.kth", keepdims=1)
    routed = g.op("GreaterOrEqual", [logits, kth], f"{name}.routed")
    masked = g.op("Where", [routed, logits, g.weight(f"{name}.off", np.float32(-np.inf))],
                  f"{name}.masked")
    return g.op("Softmax", [masked], f"{name}.gates", axis=1), chosen


def silu(g: GraphBuilder, x: str, name: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}.sigmoid")], name)


def gated_sum(g: GraphBuilder, per_expert: str, gates: str, name: str) -> str:
    """sum_e g_e y_e for y (T, E, n) and gates (T, E)."""
    weights = g.op("Unsqueeze", [gates, g.weight(f"{name}.axis", [2])], f"{name}.gates")
    weighted = g.op("Mul", [per_expert, weights], f"{name}.weighted")
    return g.op("ReduceSum", [weighted, g.weight(f"{name}.experts", [1])], name, keepdims=0)


def mixture_of_experts(g: GraphBuilder, x: str, moe: MoELayer, name: str) -> tuple[str, str]:
    """(B*N, d) -> (the layer's output, the experts chosen (B*N, k)); mlit.model.dispatch's
    formulas for the three sharing arrangements, every expert weighted by the gate."""
    experts, E, k = moe.experts, moe.num_experts, moe.gate.top_k
    w, b, v, c, w2, b2 = (t.detach() for t in experts.projections())
    router = moe.gate.w_gate.detach()  # (d, E)
    no_bias = torch.zeros(E)
    arrangement = ARRANGEMENTS[experts.shared]
    if not arrangement.w2_shared:  # each expert owns W2: the hidden layer is shared
        h = w.shape[0]
        weight = torch.cat([router, w.t(), v.t()], dim=1)
        proj = gemm(g, x, weight, torch.cat([no_bias, b, c]), f"{name}.proj")
        logits, swish, value = g.op("Split", [proj, g.weight(f"{name}.split", [E, h, h])],
                                    f"{name}.proj.split", outputs=3, axis=1)
        gates, chosen = top_k_gate(g, logits, k, f"{name}.gate")
        hidden = g.op("Mul", [silu(g, swish, f"{name}.swish"), value], f"{name}.hidden")
        d = w2.shape[2]
        outs = gemm(g, hidden, w2.permute(1, 0, 2).reshape(h, E * d), b2.reshape(-1),
                    f"{name}.experts")
        outs = g.reshape(outs, [-1, E, d], f"{name}.experts.each")
        return gated_sum(g, outs, gates, f"{name}.mixed"), chosen
    own, own_b, common, common_b, _ = own_and_common(experts.shared, w, b, v, c)
    d, h = own.shape[1], own.shape[2]
    weight = torch.cat([router, common.t(), own.permute(1, 0, 2).reshape(d, E * h)], dim=1)
    proj = gemm(g, x, weight, torch.cat([no_bias, common_b, own_b.reshape(-1)]), f"{name}.proj")
    logits, shared, owned = g.op("Split", [proj, g.weight(f"{name}.split", [E, h, E * h])],
                                 f"{name}.proj.split", outputs=3, axis=1)
    gates, chosen = top_k_gate(g, logits, k, f"{name}.gate")
    owned = g.reshape(owned, [-1, E, h], f"{name}.own")
    if arrangement.swish_on_own:  # v_w2: the swish is on each expert's own W
        owned = silu(g, owned, f"{name}.own.swish")
    else:
        shared = silu(g, shared, f"{name}.shared.swish")
    mixed = gated_sum(g, owned, gates, f"{name}.mixed")
    hidden = g.op("Mul", [shared, mixed], f"{name}.hidden")
    return gemm(g, hidden, w2.t(), b2, f"{name}.out"), chosen


def dense_mlp(g: GraphBuilder, x: str, mlp, name: str) -> str:
    """The dense ViT's Linear-GELU-Linear; the GELU (erf, as nn.GELU) in the form ONNX
    Runtime fuses into one kernel: x * 0.5 * (1 + erf(x / sqrt 2))."""
    first, _, second, _ = mlp.net
    y = gemm(g, x, *linear_weights(first), f"{name}.fc1")
    scaled = g.op("Div", [y, g.weight(f"{name}.sqrt2", np.float32(2 ** 0.5))],
                  f"{name}.scaled")
    erf = g.op("Add", [g.op("Erf", [scaled], f"{name}.erf"), g.weight(f"{name}.1",
                                                                     np.float32(1))],
               f"{name}.erf+1")
    y = g.op("Mul", [g.op("Mul", [y, erf], f"{name}.gelu2"),
                     g.weight(f"{name}.0.5", np.float32(0.5))], f"{name}.gelu")
    return gemm(g, y, *linear_weights(second), f"{name}.fc2")


# -- the whole graph -------------------------------------------------------------------------------
def encoder_graph(g: GraphBuilder, encoder: MLiTEncoder) -> tuple[str, list[str]]:
    """The tokens (B*N, d) after the last layer (before the final norm), and the experts each
    MoE layer chose, (B, 1, N, k) each."""
    cfg = encoder.cfg
    tokens = cfg.num_patches + 1
    x, chosen = patch_embedding(g, "images", encoder), []
    for i, layer in enumerate(encoder.layers):
        name = f"layers.{i}"
        y = attention(g, layer_norm(g, x, layer.norm1, f"{name}.norm1"), layer.attn, tokens,
                      f"{name}.attn")
        x = g.op("Add", [x, y], f"{name}.attn.residual")
        h = layer_norm(g, x, layer.norm2, f"{name}.norm2")
        if hasattr(layer, "mlp"):
            y = dense_mlp(g, h, layer.mlp, f"{name}.mlp")
        else:
            y, experts = mixture_of_experts(g, h, layer.moe, f"{name}.moe")
            chosen.append(g.reshape(experts, [-1, 1, tokens, cfg.top_k], f"{name}.experts"))
        x = g.op("Add", [x, y], f"{name}.residual")
    return x, chosen


def lean_graph(module: MLiT | MLiTEncoder):
    """The ModelProto of a classifier (`logits`) or an encoder alone (`tokens`), with
    `experts`; weights inside, a dynamic batch axis named `batch`."""
    from onnx import TensorProto, helper

    classifier = isinstance(module, MLiT)
    encoder = module.encoder if classifier else module
    cfg = encoder.cfg
    tokens = cfg.num_patches + 1
    g = GraphBuilder()
    with torch.no_grad():
        x, chosen = encoder_graph(g, encoder)
        x = g.reshape(x, [-1, tokens, cfg.embed_dim], "tokens.last")
        if classifier:  # the head reads the dummy patch, the last token
            x = g.op("Gather", [x, g.weight("dummy_index", np.int64(tokens - 1))], "dummy",
                     axis=1)
            x = layer_norm(g, x, encoder.norm, "norm")
            out = head(g, x, module.head)
            out_shape = ["batch", cfg.num_classes]
        else:
            out = layer_norm(g, x, encoder.norm, "norm")
            out_shape = ["batch", tokens, cfg.embed_dim]
    first = "logits" if classifier else "tokens"
    g.op("Identity", [out], first)
    experts = ["batch", len(chosen), tokens, cfg.top_k]
    if chosen:
        g.op("Concat", chosen, "experts", axis=1)
    outputs = [helper.make_tensor_value_info(first, TensorProto.FLOAT, out_shape)]
    if chosen:
        outputs.append(helper.make_tensor_value_info("experts", TensorProto.INT64, experts))
    images = helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, ["batch", cfg.in_channels, cfg.image_size, cfg.image_size])
    graph = helper.make_graph(g.nodes, "mlit", [images], outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="mlit")


def head(g: GraphBuilder, x: str, module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return gemm(g, x, *linear_weights(module), "head")
    first, _, second = module  # the zoo's MLP head: Linear, ReLU, Linear
    y = g.op("Relu", [gemm(g, x, *linear_weights(first), "head.fc1")], "head.relu")
    return gemm(g, y, *linear_weights(second), "head.fc2")
