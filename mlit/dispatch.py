"""Expert dispatch: one function, several implementations, the same answer.

The contract (docs/architecture.md, section 5: experts with shared V and W2). For tokens x (N, d) and dense gates
g (N, E), zero where a token is not routed and each row summing to 1 (softmax over top-k):

    y = W2( (x V + c) * sum_e g_e * silu(x W_e + b_e) ) + b2          (N, d)

which equals sum_e g_e * E_e(x) because V, c, W2 and b2 are shared by the layer's experts.
Only W_e (E, d, h) and b_e (E, h) belong to an expert. Gradients flow to x, every weight and
the gates; the gate gradient is only defined where g > 0 (the router's scatter drops the
rest), and implementations may leave it 0 or fill it there. Implementations:

- ``torch``:  the reference; gathers each expert's routed tokens, so unrouted token-expert
              pairs are never computed (Shazeer et al.'s sparse dispatch).
- ``dense``:  computes every expert for every token in one GEMM x [V | W_1..W_E] and masks
              with g; wasteful in FLOPs but few launches (the fair GPU baseline).
- ``triton``: the fused kernel in ``mlit.kernels`` (CUDA, or TRITON_INTERPRET=1 on CPU).
- ``auto``:   triton on CUDA tensors, torch elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def torch_expert_mixture(x, gates, expert_weight, expert_bias, v_weight, v_bias,
                         out_weight, out_bias):
    """Sparse reference: expert e only sees the tokens routed to it."""
    value = F.linear(x, v_weight, v_bias)  # (N, h), x V + c
    mixed = value.new_zeros(value.shape)  # (N, h), sum_e g_e silu(x W_e + b_e)
    for e in range(gates.shape[1]):
        routed = gates[:, e].nonzero().squeeze(1)  # tokens that chose expert e
        if routed.numel() == 0:
            continue
        gate_e = gates[routed, e].unsqueeze(1).to(value.dtype)
        act = F.silu(torch.addmm(expert_bias[e], x[routed], expert_weight[e]))
        mixed = mixed.index_add(0, routed, (act * gate_e).to(mixed.dtype))
    return F.linear(value * mixed, out_weight, out_bias)


def dense_expert_mixture(x, gates, expert_weight, expert_bias, v_weight, v_bias,
                         out_weight, out_bias):
    """Every expert on every token: one (d, h + E*h) GEMM, then a gated sum."""
    E, d, h = expert_weight.shape
    w_all = torch.cat([v_weight.t(), expert_weight.permute(1, 0, 2).reshape(d, E * h)], dim=1)
    b_all = torch.cat([v_bias, expert_bias.reshape(E * h)])
    proj = torch.addmm(b_all, x, w_all)  # (N, h + E*h)
    value, acts = proj[:, :h], F.silu(proj[:, h:]).view(-1, E, h)
    mixed = torch.einsum("ne,neh->nh", gates.to(acts.dtype), acts)
    return F.linear(value * mixed, out_weight, out_bias)


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    if impl == "auto":
        return "triton" if x.is_cuda else "torch"
    return impl


def expert_mixture(x, gates, expert_weight, expert_bias, v_weight, v_bias, out_weight,
                   out_bias, impl: str = "auto"):
    """Combine the routed SwiGLU experts of one layer; see the module docstring."""
    impl = resolve_impl(impl, x)
    if impl == "torch":
        fn = torch_expert_mixture
    elif impl == "dense":
        fn = dense_expert_mixture
    elif impl == "triton":
        from mlit.kernels.moe import triton_expert_mixture as fn
    else:
        raise ValueError(f"moe_impl={impl!r}: must be one of auto, torch, dense, triton")
    return fn(x, gates, expert_weight, expert_bias, v_weight, v_bias, out_weight, out_bias)
