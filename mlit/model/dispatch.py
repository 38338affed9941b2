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

The PyTorch implementations are in mlit/model/mixtures.py, the kernel in kernels/ (installed as
``mlit.kernels``), its first-dispatch check in mlit/model/kernel_check.py:

- ``torch``:  the reference; gathers each expert's routed tokens, so unrouted token-expert
              pairs are never computed (Shazeer et al.'s sparse dispatch); the per-expert
              loop is one autograd Function with its backward written out (RoutedProjection).
- ``dense``:  computes every expert for every token (their own projections in one GEMM)
              and sums them weighted by g (GatedSum); wasteful in FLOPs but few operations
              (the fair GPU baseline, and the CPU's choice where few activations go to
              unrouted experts).
- ``triton``: the fused kernel in ``mlit.kernels`` (CUDA, or TRITON_INTERPRET=1 on CPU), for
              v_w2 and w_w2; w_v has no single hidden activation to fuse.
- ``auto``:   triton on CUDA tensors where it serves the arrangement; dense on the CPU
              where the activations it computes in vain are few (CPU_DENSE_MAX_UNROUTED),
              torch above and elsewhere (the rule measured in docs/benchmarks.md); dense
              under torch.compile, whose graph the routing would break.

Whatever ``impl`` says, a model being recorded as a graph (torch.fx, torch.jit, torch.export;
`capturing_graph`) computes ``dense``, whose shapes do not depend on the routing, and the meta
device the sparse reference's products for k experts a token (`meta_expert_mixture`: shapes
and FLOP counts without values).

The kernel is checked against ``torch`` on a small problem the first time it serves a device
(per dtype and arrangement) in a process: a kernel that fails to build or disagrees there is
one warning line and ``torch`` under ``auto``, and a KernelFault under ``triton``.
"""

from __future__ import annotations

import sys

import torch

from mlit.kernels.arrangements import SHARED
from mlit.kernels.support import TRITON_ARRANGEMENTS, kernel_dtype
from mlit.model.capture import capturing_graph
from mlit.model.kernel_check import KernelFault, check_device
from mlit.model.mixtures import (
    dense_expert_mixture,
    meta_expert_mixture,
    torch_expert_mixture,
)

TRITON_SHARED = tuple(TRITON_ARRANGEMENTS)  # what the kernel's algebra serves (W2 shared)


# On the CPU, `auto` takes the dense mixture where the hidden activations it computes for
# experts a token is not routed to, N tokens x (E - k) experts x h, are at most this many
# values, and the sparse reference above: dense pays for those, the sparse loop for its
# per-expert gathers and scatters. Measured (docs/benchmarks.md, tools/bench_moe.py): a
# layer alone is faster dense or even up to about here (the MAE decoder's at 4,640 tokens,
# 334,000, 1.05-1.10x; mlit_xs's first, 445,000, 0.97-1.10x) and slower above (mlit_s's
# last at 2,368 tokens, 511,000, 0.91x; its first at 4,640, 668,000, 0.92-1.00x)
CPU_DENSE_MAX_UNROUTED = 450_000


def triton_preferred(x: torch.Tensor) -> bool:
    """Where `auto` picks the Triton kernel: CUDA tensors."""
    return x.is_cuda


def dense_preferred(x: torch.Tensor, unrouted_width: int | None) -> bool:
    """Where `auto` picks the dense mixture off the kernel: on the CPU, a batch of tokens x
    whose time goes to the sparse loop's per-expert operations more than to the dense
    products of unrouted experts (CPU_DENSE_MAX_UNROUTED; unrouted_width = (E - k) h)."""
    return unrouted_width is not None and x.device.type == "cpu" \
        and x.shape[0] * unrouted_width <= CPU_DENSE_MAX_UNROUTED


def resolve_impl(impl: str, x: torch.Tensor, shared: str = "v_w2",
                 unrouted_width: int | None = None) -> str:
    """The implementation that serves `impl` for tokens x of a layer whose E experts of
    hidden width h, k a token, leave unrouted_width = (E - k) h unused for each. The first
    Triton dispatch on a device (per dtype and arrangement) checks the kernel there first
    (kernel_trusted)."""
    if impl == "auto":
        if triton_preferred(x) and shared in TRITON_SHARED and kernel_trusted(
                x.device, kernel_dtype(x), shared):
            return "triton"
        # torch.compile would break its graph at every layer's routing (the sparse mixture's
        # shapes depend on it): under it, the dense mixture, one graph for the whole model
        compiling = torch.compiler.is_compiling()
        return "dense" if compiling or dense_preferred(x, unrouted_width) else "torch"
    if impl == "triton" and shared in TRITON_SHARED:
        kernel_trusted(x.device, kernel_dtype(x), shared, strict=True)
    return impl


def check_before_compile(impl: str, shared: str, device, dtype: torch.dtype) -> None:
    """Run the first-dispatch check eagerly, since torch.compile's trace only reads its
    answer (an untrusted kernel then traces as torch under auto)."""
    resolve_impl(impl, torch.empty(0, device=device, dtype=dtype), shared)


# (device, dtype, shared) -> whether the kernel built and matched the reference there
_TRUSTED: dict[tuple, bool] = {}


def kernel_trusted(device: torch.device, dtype: torch.dtype, shared: str,
                   strict: bool = False) -> bool:
    """Check the Triton kernel against the reference on a small problem the first time it
    serves (device, dtype, shared) in this process (mlit.model.kernel_check). A failure is one
    line on stderr and, under `auto`, the PyTorch implementation for the rest of the run;
    with moe_impl=triton (strict) it raises KernelFault. Under torch.compile's tracing the
    answer comes from the cache (StageRun asks before compiling)."""
    key = (torch.device(device), dtype, shared)
    if key in _TRUSTED or torch.compiler.is_compiling():
        trusted = _TRUSTED.get(key, True)
    else:
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
        raise KernelFault(f"the Triton MoE kernel failed its check on {key[0]} "
                          f"({str(dtype).removeprefix('torch.')}) earlier in this run")
    return trusted


def expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2", impl: str = "auto",
                   top_k: int = 1):
    """Combine the routed SwiGLU experts of one layer; see the module docstring. Eager
    PyTorch takes `impl`; a scripted model and a recorded graph (capturing_graph) the dense
    mixture; the meta device the sparse one's products for `top_k` experts a token."""
    if torch.jit.is_scripting():
        return dense_expert_mixture(x, gates, w, b, v, c, w2, b2, shared)
    else:
        return dispatch(x, gates, w, b, v, c, w2, b2, shared, impl, top_k)


@torch.jit.unused
def dispatch(x, gates, w, b, v, c, w2, b2, shared: str, impl: str, top_k: int
             ) -> torch.Tensor:
    """expert_mixture in eager PyTorch: the implementation `impl` resolves to."""
    if capturing_graph():
        # the sparse mixture's shapes depend on the routing, which a graph cannot hold: the
        # dense one is the same function of the same weights (unrouted experts are
        # multiplied by a gate of exactly 0), equal within rounding
        return dense_expert_mixture(x, gates, w, b, v, c, w2, b2, shared)
    if x.device.type == "meta":  # shapes without values: no routing to read
        return meta_expert_mixture(x, gates, w, b, v, c, w2, b2, shared, top_k)
    if shared not in SHARED:
        raise ValueError(f"shared={shared!r}: must be one of {', '.join(SHARED)}")
    # (E - k) h: W2 is (d, h) shared, (E, h, d) owned
    unrouted_width = (gates.shape[1] - top_k) * w2.shape[1]
    impl = resolve_impl(impl, x, shared, unrouted_width)
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
