"""Triton kernels for the shared-projection MoE hidden layer (docs/architecture.md, section 5; mlit/model/dispatch.py).

For a tile of tokens and a tile of hidden units they compute

    s     = x U^T + u                       (the shared projection, one for every expert)
    a_e   = x P_e + p_e                     (expert e's own, only for experts routed in the tile)
    H     = f(s) * sum_e g_e * phi(a_e)     (the one activation written to memory)

with the swish on the expert's side (f = id, phi = silu: shared = v_w2, U = V, P_e = W_e) or
on the shared side (f = silu, phi = id: shared = w_w2, U = W, P_e = V_e), the compile-time
SWISH_SHARED. Backwards, the element-wise part of the gradient (recomputing a_e rather than
storing it): ds = dH * mixed * f'(s), dact_e = dH * f(s) * g_e * phi'(a_e), dg_e = sum_h dH *
f(s) * phi(a_e). The weight and input gradients are then plain GEMMs (cuBLAS) over those.

Offsets are int64 (N * E * h can pass 2^31 at MAE batch sizes); widths that are not powers
of two (27, 81, 144) are handled by masked tiles.
"""

import triton
import triton.language as tl


@triton.jit
def _tile_matmul(x_ptr, w_ptr, offs_n, offs_h, mask_n, mask_h, D, stride_xn, stride_wd,
                 stride_wh, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_N, BLOCK_H) tile of x @ W, with W read as (D, HID) through its strides."""
    acc = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask_d = offs_d < D
        x = tl.load(x_ptr + offs_n[:, None] * stride_xn + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        w = tl.load(w_ptr + offs_d[:, None] * stride_wd + offs_h[None, :] * stride_wh,
                    mask=mask_d[:, None] & mask_h[None, :], other=0.0)
        acc += tl.dot(x, w, input_precision=PRECISION)
    return acc


@triton.jit
def _tile_offsets(N, HID, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's tokens and hidden units (int64) and their in-bounds masks."""
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    return offs_n, offs_h, offs_n < N, offs_h < HID


@triton.jit
def _shared_value(X, V, C, offs_n, offs_h, mask_n, mask_h, D, BLOCK_N: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """x V^T + c, fp32. V is (HID, D) row-major, read transposed through its strides."""
    value = _tile_matmul(X, V, offs_n, offs_h, mask_n, mask_h, D, D, 1, D,
                         BLOCK_N, BLOCK_H, BLOCK_D, PRECISION)
    return value + tl.load(C + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _expert_preactivation(X, W, B, e, offs_n, offs_h, mask_n, mask_h, D, HID,
                          BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                          PRECISION: tl.constexpr):
    """a_e = x W_e + b_e, fp32, for expert e (W is (E, D, HID) row-major)."""
    a = _tile_matmul(X, W + e * D * HID, offs_n, offs_h, mask_n, mask_h, D, D, HID, 1,
                     BLOCK_N, BLOCK_H, BLOCK_D, PRECISION)
    return a + tl.load(B + e * HID + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]


@triton.jit
def moe_hidden_fwd_kernel(
    X, G, W, B, V, C, H,  # x (N,D), gates (N,E), P (E,D,HID), p (E,HID), U (HID,D), u (HID), H (N,HID)
    N, D, HID, E,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, SWISH_SHARED: tl.constexpr,
):
    offs_n, offs_h, mask_n, mask_h = _tile_offsets(N, HID, BLOCK_N, BLOCK_H)
    value = _shared_value(X, V, C, offs_n, offs_h, mask_n, mask_h, D,
                          BLOCK_N, BLOCK_H, BLOCK_D, PRECISION)
    if SWISH_SHARED:
        value = value * tl.sigmoid(value)

    mixed = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for e in range(E):
        g = tl.load(G + offs_n * E + e, mask=mask_n, other=0.0).to(tl.float32)
        if tl.max(g, axis=0) > 0:  # skip experts that no token of this tile chose
            a = _expert_preactivation(X, W, B, e, offs_n, offs_h, mask_n, mask_h, D, HID,
                                      BLOCK_N, BLOCK_H, BLOCK_D, PRECISION)
            if SWISH_SHARED:
                mixed += g[:, None] * a
            else:
                mixed += g[:, None] * (a * tl.sigmoid(a))

    out = value * mixed
    tl.store(H + offs_n[:, None] * HID + offs_h[None, :], out.to(H.dtype.element_ty),
             mask=mask_n[:, None] & mask_h[None, :])


@triton.jit
def moe_hidden_bwd_kernel(
    X, G, W, B, V, C, DH,  # as forward, plus dH (N,HID)
    DVALUE, DACT, DG,  # dvalue (N,HID), dact (N,E*HID) zero-filled, dg partials (tiles_h,N,E) zero-filled
    N, D, HID, E,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, SWISH_SHARED: tl.constexpr,
):
    offs_n, offs_h, mask_n, mask_h = _tile_offsets(N, HID, BLOCK_N, BLOCK_H)
    mask = mask_n[:, None] & mask_h[None, :]
    value = _shared_value(X, V, C, offs_n, offs_h, mask_n, mask_h, D,
                          BLOCK_N, BLOCK_H, BLOCK_D, PRECISION)  # s, before f
    if SWISH_SHARED:
        sig_s = tl.sigmoid(value)
        dvalue_scale = sig_s * (1.0 + value * (1.0 - sig_s))  # f'(s) = silu'(s)
        value = value * sig_s
    dh = tl.load(DH + offs_n[:, None] * HID + offs_h[None, :], mask=mask, other=0.0)
    dmixed = dh.to(tl.float32) * value  # dL/d(sum_e g_e phi(a_e))

    mixed = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for e in range(E):
        g = tl.load(G + offs_n * E + e, mask=mask_n, other=0.0).to(tl.float32)
        if tl.max(g, axis=0) > 0:
            a = _expert_preactivation(X, W, B, e, offs_n, offs_h, mask_n, mask_h, D, HID,
                                      BLOCK_N, BLOCK_H, BLOCK_D, PRECISION)
            if SWISH_SHARED:
                act = a
                dact = dmixed * g[:, None]
            else:
                sig = tl.sigmoid(a)
                act = a * sig
                dact = dmixed * g[:, None] * (sig * (1.0 + a * (1.0 - sig)))  # silu'
            mixed += g[:, None] * act
            # gate gradient: only where routed (the contract of mlit.model.dispatch)
            dg = tl.where(g > 0, tl.sum(dmixed * act, axis=1), 0.0)
            tl.store(DG + tl.program_id(1).to(tl.int64) * N * E + offs_n * E + e, dg,
                     mask=mask_n)
            tl.store(DACT + offs_n[:, None] * (E * HID) + e * HID + offs_h[None, :],
                     dact.to(DACT.dtype.element_ty), mask=mask)

    dvalue = dh.to(tl.float32) * mixed
    if SWISH_SHARED:
        dvalue = dvalue * dvalue_scale
    tl.store(DVALUE + offs_n[:, None] * HID + offs_h[None, :],
             dvalue.to(DVALUE.dtype.element_ty), mask=mask)
