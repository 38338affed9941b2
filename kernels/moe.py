"""The Triton expert dispatch as torch custom ops, with autograd and fake (meta)
implementations so the model also runs under torch.compile.

    y = triton_expert_mixture(x, gates, W, b, V, c, W2, b2, shared)   # mlit.model.dispatch's contract

Forward: one fused kernel writes H = f(x U^T + u) * sum_e g_e phi(x P_e + p_e), where U is
the shared one of V and W and P_e the expert's own (moe_kernels.py); W2 stays a cuBLAS GEMM.
Backward: one fused kernel recomputes a_e and writes dvalue, dact and dgates; the weight and
input gradients are three GEMMs over them. The algebra needs W2 shared, so the kernel serves
shared = v_w2 and w_w2; with w_v every expert owns its W2 and there is no single hidden
activation to write (mlit.kernels.arrangements).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from mlit.kernels.arrangements import own_and_common
from mlit.kernels.interpreter_compat import patch_interpreter
from mlit.kernels.moe_kernels import moe_hidden_bwd_kernel, moe_hidden_fwd_kernel
from mlit.kernels.support import TRITON_ARRANGEMENTS, kernel_dtype

patch_interpreter()  # Triton 3.6's interpreter with NumPy >= 2.4 (interpreter_compat.py)

BLOCK_N, BLOCK_H, BLOCK_D = 64, 32, 32
# 8 warps rather than Triton's default 4: at 4 the backward takes all 255 registers a thread
# and spills on sm_80 (tools/kernel_report.py); at 8 neither kernel spills on sm_80 or sm_90
NUM_WARPS = 8


def _grid(n: int, hid: int):
    return (triton.cdiv(n, BLOCK_N), triton.cdiv(hid, BLOCK_H))


def launch_options(dtype: torch.dtype) -> dict:
    """Compile-time constants and warps of both kernels for an activation dtype (aot.py
    compiles with the same). fp32 stays exact (ieee); the precision is ignored for 16-bit."""
    return dict(BLOCK_N=BLOCK_N, BLOCK_H=BLOCK_H, BLOCK_D=BLOCK_D,
                PRECISION="ieee" if dtype == torch.float32 else "tf32", num_warps=NUM_WARPS)


def _check(x, gates, w, b, v, c) -> None:
    """w, b: the experts' own projection (E, D, HID), (E, HID); v, c: the shared one
    (HID, D), (HID)."""
    N, D = x.shape
    E, D_w, HID = w.shape
    if gates.shape != (N, E) or D_w != D or b.shape != (E, HID) or v.shape != (HID, D) \
            or c.shape != (HID,):
        raise ValueError(f"triton expert mixture: shapes x{tuple(x.shape)} gates"
                         f"{tuple(gates.shape)} W{tuple(w.shape)} b{tuple(b.shape)} "
                         f"V{tuple(v.shape)} c{tuple(c.shape)} do not fit together")


@torch.library.custom_op("mlit::moe_hidden", mutates_args=())
def moe_hidden(x: torch.Tensor, gates: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
               v: torch.Tensor, c: torch.Tensor, swish_shared: bool) -> torch.Tensor:
    _check(x, gates, w, b, v, c)
    N, D = x.shape
    E, _, HID = w.shape
    h = torch.empty(N, HID, device=x.device, dtype=x.dtype)
    if N:
        moe_hidden_fwd_kernel[_grid(N, HID)](
            x, gates, w, b, v, c, h, N, D, HID, E, SWISH_SHARED=swish_shared,
            **launch_options(x.dtype))
    return h


@moe_hidden.register_fake
def _(x, gates, w, b, v, c, swish_shared):
    return x.new_empty(x.shape[0], w.shape[2])


@torch.library.custom_op("mlit::moe_hidden_backward", mutates_args=())
def moe_hidden_backward(x: torch.Tensor, gates: torch.Tensor, w: torch.Tensor,
                        b: torch.Tensor, v: torch.Tensor, c: torch.Tensor,
                        swish_shared: bool, dh: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The element-wise part of the backward: (dvalue (N,h), dact (N,E*h), dgates (N,E))."""
    N, D = x.shape
    E, _, HID = w.shape
    grid = _grid(N, HID)
    dvalue = torch.empty(N, HID, device=x.device, dtype=x.dtype)
    dact = torch.zeros(N, E * HID, device=x.device, dtype=x.dtype)  # 0 where unrouted
    dg_parts = torch.zeros(grid[1], N, E, device=x.device, dtype=torch.float32)
    if N:
        moe_hidden_bwd_kernel[grid](
            x, gates, w, b, v, c, dh.contiguous(), dvalue, dact, dg_parts, N, D, HID, E,
            SWISH_SHARED=swish_shared, **launch_options(x.dtype))
    # partial sums per hidden tile, added in a fixed order: deterministic, no atomics
    return dvalue, dact, dg_parts.sum(0).to(gates.dtype)


@moe_hidden_backward.register_fake
def _(x, gates, w, b, v, c, swish_shared, dh):
    E, _, HID = w.shape
    return (x.new_empty(x.shape[0], HID), x.new_empty(x.shape[0], E * HID),
            gates.new_empty(gates.shape))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.swish_shared = inputs[6]


def _backward(ctx, dh):
    x, gates, w, b, v, c = ctx.saved_tensors
    E, D, HID = w.shape
    dvalue, dact, dgates = moe_hidden_backward(x, gates, w, b, v, c, ctx.swish_shared, dh)
    w_cat = w.permute(1, 0, 2).reshape(D, E * HID)  # (D, E*h): [W_1 | ... | W_E]
    dx = dvalue @ v + dact @ w_cat.t()
    dw = (x.t() @ dact).view(D, E, HID).permute(1, 0, 2)
    db = dact.sum(0).view(E, HID)
    dv = dvalue.t() @ x
    dc = dvalue.sum(0)
    return dx, dgates, dw, db, dv, dc, None


moe_hidden.register_autograd(_backward, setup_context=_setup_context)


def triton_expert_mixture(x, gates, w, b, v, c, w2, b2, shared: str = "v_w2"):
    """mlit.model.dispatch's contract on the Triton kernels. Under autocast the kernel runs in the
    autocast dtype (custom ops are not autocast by themselves)."""
    swish_shared = TRITON_ARRANGEMENTS[shared]  # mlit.model.dispatch checked the arrangement
    own, own_bias, common, common_bias, _ = own_and_common(shared, w, b, v, c)
    dtype = kernel_dtype(x)
    x, own, own_bias, common, common_bias = (t.to(dtype).contiguous() for t in
                                             (x, own, own_bias, common, common_bias))
    hidden = moe_hidden(x, gates.contiguous(), own, own_bias, common, common_bias,
                        swish_shared)
    return F.linear(hidden, w2, b2)
