"""The expert mixture in PyTorch: the sparse reference and the dense baseline of the
contract in mlit/model/dispatch.py (docs/architecture.md, section 5), for the three sharing
arrangements of paper Table 9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlit.kernels.arrangements import own_and_common, owns_w2


def routed_to(gates: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens routed to expert e and their gates (n_e, 1). index_select, whose gradient is
    an index_add (not advanced indexing's accumulating index_put, several times slower on
    the CPU), and the sums go in place: the same values, bit for bit."""
    column = gates[:, e]
    routed = column.nonzero().squeeze(1)
    return routed, column.index_select(0, routed).unsqueeze(1)


def torch_expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2"):
    """Sparse reference: expert e only sees the tokens routed to it."""
    if owns_w2(shared):  # one hidden layer, E output projections
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)  # (N, h), shared
        out = hidden.new_zeros(x.shape[0], w2.shape[2])
        for e in range(gates.shape[1]):
            routed, gate_e = routed_to(gates, e)
            if routed.numel():
                y_e = torch.addmm(b2[e], hidden.index_select(0, routed), w2[e])
                out.index_add_(0, routed, y_e * gate_e.to(y_e.dtype))
        return out
    own, own_bias, common, common_bias, swish_own = own_and_common(shared, w, b, v, c)
    value = F.linear(x, common, common_bias)  # (N, h), the shared factor
    if not swish_own:
        value = F.silu(value)
    mixed = value.new_zeros(value.shape)  # (N, h), sum_e g_e phi(x P_e + p_e)
    for e in range(gates.shape[1]):
        routed, gate_e = routed_to(gates, e)
        if routed.numel() == 0:
            continue
        act = torch.addmm(own_bias[e], x.index_select(0, routed), own[e])
        if swish_own:
            act = F.silu(act)
        mixed.index_add_(0, routed, (act * gate_e.to(value.dtype)).to(mixed.dtype))
    return F.linear(value * mixed, w2, b2)


def dense_expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2"):
    """Every expert on every token: one GEMM, then a gated sum."""
    if owns_w2(shared):
        E, h, d = w2.shape
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)
        outs = torch.addmm(b2.reshape(E * d), hidden,
                           w2.permute(1, 0, 2).reshape(h, E * d)).view(-1, E, d)
        return torch.einsum("ne,ned->nd", gates.to(outs.dtype), outs)
    own, own_bias, common, common_bias, swish_own = own_and_common(shared, w, b, v, c)
    E, d, h = own.shape
    w_all = torch.cat([common.t(), own.permute(1, 0, 2).reshape(d, E * h)], dim=1)
    b_all = torch.cat([common_bias, own_bias.reshape(E * h)])
    proj = torch.addmm(b_all, x, w_all)  # (N, h + E*h)
    value, acts = proj[:, :h], proj[:, h:].view(-1, E, h)
    value, acts = (value, F.silu(acts)) if swish_own else (F.silu(value), acts)
    mixed = torch.einsum("ne,neh->nh", gates.to(acts.dtype), acts)
    return F.linear(value * mixed, w2, b2)


def meta_expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str, top_k: int):
    """The sparse reference's matrix products on the meta device, where tensors have shapes
    and no values, so no routing: the N*k token-expert pairs go through expert 0's own
    projection. Which expert a token goes to changes no product's size, so a FLOP count here
    (mlit/model/flops.py) is the sparse reference's, and the output has the mixture's shape."""
    pairs = x.repeat_interleave(top_k, dim=0)  # (N*k, d)
    if owns_w2(shared):
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)
        y = torch.addmm(b2[0], hidden.repeat_interleave(top_k, dim=0), w2[0])
        return y.view(x.shape[0], top_k, -1).sum(1)
    own, own_bias, common, common_bias, swish_own = own_and_common(shared, w, b, v, c)
    value = F.linear(x, common, common_bias)
    if not swish_own:
        value = F.silu(value)
    act = torch.addmm(own_bias[0], pairs, own[0])  # (N*k, h)
    if swish_own:
        act = F.silu(act)
    mixed = act.view(x.shape[0], top_k, -1).sum(1)
    return F.linear(value * mixed, w2, b2)
