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

The kernel is checked against ``torch`` on a small problem the first time it serves a device
(per dtype and arrangement) in a process: a kernel that fails to build or disagrees there is
one warning line and ``torch`` under ``auto``, and a KernelFault under ``triton``.
"""

from __future__ import annotations

import sys

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


def triton_preferred(x: torch.Tensor) -> bool:
    """Where `auto` picks the Triton kernel: CUDA tensors."""
    return x.is_cuda


def resolve_impl(impl: str, x: torch.Tensor, shared: str = "v_w2") -> str:
    """The implementation that serves `impl` for x. The first Triton dispatch on a device
    (per dtype and arrangement) checks the kernel there first (kernel_trusted)."""
    if impl == "auto":
        if not (triton_preferred(x) and shared in TRITON_SHARED):
            return "torch"
        return "triton" if kernel_trusted(x.device, kernel_dtype(x), shared) else "torch"
    if impl == "triton" and shared in TRITON_SHARED:
        kernel_trusted(x.device, kernel_dtype(x), shared, strict=True)
    return impl


def check_before_compile(impl: str, shared: str, device, dtype: torch.dtype) -> None:
    """Run the first-dispatch check eagerly, since torch.compile's trace only reads its
    answer (an untrusted kernel then traces as torch under auto)."""
    resolve_impl(impl, torch.empty(0, device=device, dtype=dtype), shared)


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the Triton kernel runs in: autocast's where it is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# (device, dtype, shared) -> whether the kernel built and matched the reference there
_TRUSTED: dict[tuple, bool] = {}


def kernel_trusted(device: torch.device, dtype: torch.dtype, shared: str,
                   strict: bool = False) -> bool:
    """Check the Triton kernel against the reference on a small problem the first time it
    serves (device, dtype, shared) in this process (mlit.kernels.selfcheck). A failure is one
    line on stderr and, under `auto`, the PyTorch implementation for the rest of the run;
    with moe_impl=triton (strict) it raises KernelFault. Under torch.compile's tracing the
    answer comes from the cache (StageRun asks before compiling)."""
    key = (torch.device(device), dtype, shared)
    if key in _TRUSTED or torch.compiler.is_compiling():
        trusted = _TRUSTED.get(key, True)
    else:
        from mlit.kernels.selfcheck import KernelFault, check_device
        try:
            check_device(key[0], dtype, shared)
            trusted = _TRUSTED[key] = True
        except KernelFault as fault:
            _TRUSTED[key] = False
            if strict:
                raise
            print(f"warning: {fault}; using moe_impl=torch (the PyTorch implementation) for "
                  "the rest of this run", file=sys.stderr)
            trusted = False
    if strict and not trusted:
        from mlit.kernels.selfcheck import KernelFault
        raise KernelFault(f"the Triton MoE kernel failed its check on {key[0]} "
                          f"({str(dtype).removeprefix('torch.')}) earlier in this run")
    return trusted


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
