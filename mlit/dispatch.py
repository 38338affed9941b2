"""Expert dispatch: one function, several implementations, the same answer.

The contract (docs/architecture.md, section 5). Each expert of a layer is a SwiGLU network

    E_e(x) = (silu(x W + b) * (x V + c)) W2 + b2

that owns one of the three projections and shares the other two with the layer's other
experts (`shared` names the shared two, the paper's Table 9):

    v_w2  W_e own, V and W2 shared:  y = W2( (x V + c) * sum_e g_e silu(x W_e + b_e) ) + b2
    w_w2  V_e own, W and W2 shared:  y = W2( silu(x W + b) * sum_e g_e (x V_e + c_e) ) + b2
    w_v   W2_e own, W and V shared:  y = sum_e g_e ( h W2_e + b2_e ),  h = silu(x W + b) * (x V + c)

for tokens x (N, d) and dense gates g (N, E), zero where a token is not routed and each row
summing to 1 (softmax over top-k); the first two factor as shown because W2 is shared and the
gates sum to 1. Arguments, in the order (W, b, V, c, W2, b2): a shared projection in
nn.Linear's layout (W, V: (h, d); W2: (d, h); biases (h,) or (d,)), an expert-owned one
stacked (W_e, V_e: (E, d, h), (E, h); W2_e: (E, h, d), (E, d)). Gradients flow to x, every
weight and the gates; the gate gradient is only defined where g > 0 (the router's scatter
drops the rest), and implementations may leave it 0 or fill it there. Implementations:

- ``torch``:  the reference; gathers each expert's routed tokens, so unrouted token-expert
              pairs are never computed (Shazeer et al.'s sparse dispatch).
- ``dense``:  computes every expert for every token in one GEMM and masks with g; wasteful
              in FLOPs but few launches (the fair GPU baseline).
- ``triton``: the fused kernel in ``mlit.kernels`` (CUDA, or TRITON_INTERPRET=1 on CPU), for
              v_w2 and w_w2; w_v has no single hidden activation to fuse.
- ``auto``:   triton on CUDA tensors where it serves the arrangement, torch elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHARED = ("v_w2", "w_w2", "w_v")
TRITON_SHARED = ("v_w2", "w_w2")


def _own_and_common(shared, w, b, v, c):
    """(own weight, own bias, common weight, common bias, swish on the own side) for the
    arrangements whose W2 is shared."""
    if shared == "v_w2":
        return w, b, v, c, True
    return v, c, w, b, False


def torch_expert_mixture(x, gates, w, b, v, c, w2, b2, shared="v_w2"):
    """Sparse reference: expert e only sees the tokens routed to it."""
    if shared == "w_v":
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)  # (N, h), shared
        out = hidden.new_zeros(x.shape[0], w2.shape[2])
        for e in range(gates.shape[1]):
            routed = gates[:, e].nonzero().squeeze(1)
            if routed.numel():
                y_e = torch.addmm(b2[e], hidden[routed], w2[e])
                out = out.index_add(0, routed, y_e * gates[routed, e, None].to(y_e.dtype))
        return out
    own, own_bias, common, common_bias, swish_own = _own_and_common(shared, w, b, v, c)
    value = F.linear(x, common, common_bias)  # (N, h), the shared factor
    if not swish_own:
        value = F.silu(value)
    mixed = value.new_zeros(value.shape)  # (N, h), sum_e g_e phi(x P_e + p_e)
    for e in range(gates.shape[1]):
        routed = gates[:, e].nonzero().squeeze(1)  # tokens that chose expert e
        if routed.numel() == 0:
            continue
        gate_e = gates[routed, e].unsqueeze(1).to(value.dtype)
        act = torch.addmm(own_bias[e], x[routed], own[e])
        if swish_own:
            act = F.silu(act)
        mixed = mixed.index_add(0, routed, (act * gate_e).to(mixed.dtype))
    return F.linear(value * mixed, w2, b2)


def dense_expert_mixture(x, gates, w, b, v, c, w2, b2, shared="v_w2"):
    """Every expert on every token: one GEMM, then a gated sum."""
    if shared == "w_v":
        E, h, d = w2.shape
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)
        outs = torch.addmm(b2.reshape(E * d), hidden,
                           w2.permute(1, 0, 2).reshape(h, E * d)).view(-1, E, d)
        return torch.einsum("ne,ned->nd", gates.to(outs.dtype), outs)
    own, own_bias, common, common_bias, swish_own = _own_and_common(shared, w, b, v, c)
    E, d, h = own.shape
    w_all = torch.cat([common.t(), own.permute(1, 0, 2).reshape(d, E * h)], dim=1)
    b_all = torch.cat([common_bias, own_bias.reshape(E * h)])
    proj = torch.addmm(b_all, x, w_all)  # (N, h + E*h)
    value, acts = proj[:, :h], proj[:, h:].view(-1, E, h)
    value, acts = (value, F.silu(acts)) if swish_own else (F.silu(value), acts)
    mixed = torch.einsum("ne,neh->nh", gates.to(acts.dtype), acts)
    return F.linear(value * mixed, w2, b2)


def resolve_impl(impl: str, x: torch.Tensor, shared: str = "v_w2") -> str:
    if impl == "auto":
        return "triton" if x.is_cuda and shared in TRITON_SHARED else "torch"
    return impl


def expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2", impl: str = "auto"):
    """Combine the routed SwiGLU experts of one layer; see the module docstring."""
    if shared not in SHARED:
        raise ValueError(f"shared={shared!r}: must be one of {', '.join(SHARED)}")
    impl = resolve_impl(impl, x, shared)
    if impl == "torch":
        fn = torch_expert_mixture
    elif impl == "dense":
        fn = dense_expert_mixture
    elif impl == "triton":
        if shared not in TRITON_SHARED:
            raise ValueError(f"moe_impl=triton does not support shared={shared} (each expert "
                             f"owns its W2, so there is no single hidden activation); use "
                             f"torch, dense or auto")
        from mlit.kernels.moe import triton_expert_mixture as fn
    else:
        raise ValueError(f"moe_impl={impl!r}: must be one of auto, torch, dense, triton")
    return fn(x, gates, w, b, v, c, w2, b2, shared)
