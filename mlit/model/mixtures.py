"""The expert mixture in PyTorch: the sparse reference and the dense mixture of the
contract in mlit/model/dispatch.py (docs/architecture.md, section 5), for the three sharing
arrangements of paper Table 9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mlit.kernels.arrangements import own_and_common, owns_w2
from mlit.kernels.support import kernel_dtype
from mlit.model.capture import capturing_graph


def routed_to(gates: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens routed to expert e and their gates (n_e, 1)."""
    column = gates[:, e]
    routed = column.nonzero().squeeze(1)
    return routed, column.index_select(0, routed).unsqueeze(1)


class RoutedProjection(torch.autograd.Function):
    """y = sum_e g_e phi(z A_e + a_e) over the routed (token, expert) pairs only, phi = silu or
    the identity: each expert's own projection, the one part of a mixture that differs between
    the arrangements (z is x for an own W or V, the hidden activation for an own W2).

    Its backward is written out rather than left to autograd, which for the same products
    would zero and add a tokens-sized gradient per expert (one per gather, then their sum)
    and a weight-sized one per expert (the select of A_e): here each gradient is one buffer
    that every expert adds its rows into (a layer's forward and backward 1.03-1.26x faster on
    the CPU, docs/benchmarks.md; tests/test_moe.py checks it with gradcheck)."""

    @staticmethod
    def forward(ctx, z, gates, weight, bias, swish: bool):
        out = z.new_zeros(z.shape[0], weight.shape[2])  # z, weight and bias: one dtype
        pairs = []
        for e in range(gates.shape[1]):
            routed, gate_e = routed_to(gates, e)
            if routed.numel() == 0:  # an expert no token chose is never computed
                continue
            z_e = z.index_select(0, routed)
            pre = torch.addmm(bias[e], z_e, weight[e])
            act = F.silu(pre) if swish else pre
            gate_e = gate_e.to(act.dtype)  # the gates are routing's fp32
            out.index_add_(0, routed, act * gate_e)
            pairs.append((e, routed, gate_e, z_e, pre, act))
        ctx.pairs, ctx.swish = pairs, swish
        ctx.save_for_backward(z, gates, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, gates, weight = ctx.saved_tensors
        need_z, need_gates, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_z = torch.zeros_like(z) if need_z else None
        grad_gates = torch.zeros_like(gates) if need_gates else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = weight.new_zeros(weight.shape[0], weight.shape[2]) if need_bias else None
        for e, routed, gate_e, z_e, pre, act in ctx.pairs:
            grad_e = grad.index_select(0, routed)
            if need_gates:  # d out / d g_e = phi(z A_e + a_e), summed against the gradient
                grad_gates[:, e].index_copy_(0, routed, (grad_e * act).sum(1).to(gates.dtype))
            grad_pre = grad_e * gate_e
            if ctx.swish:
                grad_pre = torch.ops.aten.silu_backward(grad_pre, pre)
            if need_weight:
                grad_weight[e] = z_e.t() @ grad_pre
            if need_bias:
                grad_bias[e] = grad_pre.sum(0)
            if need_z:
                grad_z.index_add_(0, routed, grad_pre @ weight[e].t())
        return grad_z, grad_gates, grad_weight, grad_bias, None


class GatedSum(torch.autograd.Function):
    """y_n = sum_e g_ne a_ne for gates g (N, E) and every expert's output a (N, E, h): N
    products (1, E) x (E, h). Its backward is written out because autograd's for the same
    product takes a batched matrix product for a's gradient, the outer product g_n dy_n, and
    a strided copy after it: here that is one broadcast multiply (an MoE layer's forward and
    backward with the dense mixture 1.04-1.06x faster on the CPU, docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, gates, acts):
        ctx.save_for_backward(gates, acts)
        return torch.bmm(gates.unsqueeze(1), acts).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gates, acts = ctx.saved_tensors
        need_gates, need_acts = ctx.needs_input_grad
        # d/dg_ne = <a_ne, dy_n>, d/da_ne = g_ne dy_n
        grad_gates = torch.bmm(acts, grad.unsqueeze(2)).squeeze(2) if need_gates else None
        grad_acts = gates.unsqueeze(2) * grad.unsqueeze(1) if need_acts else None
        return grad_gates, grad_acts


def gated_sum(gates: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """sum_e g_ne a_ne, in the outputs' dtype (the gates are routing's fp32): GatedSum when
    run, an einsum (the same product) in a graph (scripted, recorded or compiled), which
    needs operations it can see through."""
    gates = gates.to(acts.dtype)
    if torch.jit.is_scripting():
        return torch.einsum("ne,neh->nh", gates, acts)
    return gated_sum_eager(gates, acts)


@torch.jit.unused
def gated_sum_eager(gates: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    if capturing_graph() or torch.compiler.is_compiling():
        return torch.einsum("ne,neh->nh", gates, acts)
    return GatedSum.apply(gates, acts)


def routed_projection(z, gates, weight, bias, swish: bool) -> torch.Tensor:
    """RoutedProjection in the dtype autocast would run its products in, cast to it outside
    the Function so that autograd casts the gradients back (its backward runs in one dtype)."""
    dtype = kernel_dtype(z)
    return RoutedProjection.apply(z.to(dtype), gates, weight.to(dtype), bias.to(dtype), swish)


def torch_expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2"):
    """Sparse reference: expert e only sees the tokens routed to it (RoutedProjection)."""
    if owns_w2(shared):  # one hidden layer, E output projections
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)  # (N, h), shared
        return routed_projection(hidden, gates, w2, b2, swish=False)
    own, own_bias, common, common_bias, swish_own = own_and_common(shared, w, b, v, c)
    value = F.linear(x, common, common_bias)  # (N, h), the shared factor
    if not swish_own:
        value = F.silu(value)
    mixed = routed_projection(x, gates, own, own_bias, swish_own)  # sum_e g_e phi(x P_e + p_e)
    return F.linear(value * mixed, w2, b2)


def dense_expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2"):
    """Every expert on every token, the experts' own projections in one GEMM, then a gated
    sum."""
    if owns_w2(shared):
        E, h, d = w2.shape
        hidden = F.silu(F.linear(x, w, b)) * F.linear(x, v, c)
        outs = torch.addmm(b2.reshape(E * d), hidden,
                           w2.permute(1, 0, 2).reshape(h, E * d)).view(-1, E, d)
        return gated_sum(gates, outs)
    own, own_bias, common, common_bias, swish_own = own_and_common(shared, w, b, v, c)
    E, d, h = own.shape
    # the shared projection is a GEMM of its own: joined to the experts' (one concatenated
    # weight, the product split after), the copies cost the CPU more than the GEMM saved
    value = F.linear(x, common, common_bias)  # (N, h)
    acts = torch.addmm(own_bias.reshape(E * h), x,
                       own.permute(1, 0, 2).reshape(d, E * h)).view(-1, E, h)
    value, acts = (value, F.silu(acts)) if swish_own else (F.silu(value), acts)
    mixed = gated_sum(gates, acts)
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
