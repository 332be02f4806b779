"""SCMM backend in Triton (GPU, or the interpreter on CPU tensors with TRITON_INTERPRET=1).

Implements the backend protocol of ``ops.py``. Forward: one kernel writes the concatenated two-scale map directly
(each half-resolution value is pooled and convolved on the fly, nothing intermediate is stored) and one
flat kernel does relu(G)·x + x. Backward of the two-scale branch: two small kernels at half resolution
(upsample-gradient sums; depth-wise input/weight gradients) and one full-resolution kernel that routes the
pooled gradient to each window's recomputed argmax and does the full-scale half. Weight gradients are
per-block partial sums reduced on the host side of the call (deterministic, no atomics).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._ext import device_guard

BLOCK = 256


def pool_extent(n: int, out: int) -> int:
    """Largest adaptive-pool window along an axis of length n pooled to out cells."""
    return max(-(-((i + 1) * n) // out) - (i * n) // out for i in range(out))


@triton.jit
def _window_max(x_ptr, base, sh, sw, i, j, H, W, oh, ow, KH: tl.constexpr, KW: tl.constexpr, mask):
    """Adaptive max-pool of window (i, j): value and flat argmax (first max in scan order, last NaN)."""
    r0 = (i * H) // oh
    r1 = ((i + 1) * H + oh - 1) // oh
    c0 = (j * W) // ow
    c1 = ((j + 1) * W + ow - 1) // ow
    m = tl.full(i.shape, float("-inf"), tl.float32)
    am = r0 * W + c0
    for dy in tl.static_range(KH):
        for dx in tl.static_range(KW):
            r = r0 + dy
            c = c0 + dx
            ok = mask & (r < r1) & (c < c1)
            v = tl.load(x_ptr + base + tl.where(ok, r, 0) * sh + tl.where(ok, c, 0) * sw, mask=ok,
                        other=float("-inf")).to(tl.float32)
            take = ok & ((v > m) | (v != v))
            m = tl.where(take, v, m)
            am = tl.where(take, r * W + c, am)
    return m, am


@triton.jit
def _two_scale_fwd_kernel(x_ptr, s_ptr, wa_ptr, ba_ptr, wb_ptr, bb_ptr, C, H, W, oh, ow,
                          xsb, xsc, xsh, xsw, ssb, ssc, ssh, ssw,
                          KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    half = C // 2
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = offs // W
    x = offs % W
    xbase = b * xsb + c * xsc
    acc = tl.zeros([BLOCK], tl.float32)
    if c < half:
        acc += tl.load(ba_ptr + c)
        for k in tl.static_range(9):
            yy = y + (k // 3 - 1)
            xx = x + (k % 3 - 1)
            ok = mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            v = tl.load(x_ptr + xbase + tl.where(ok, yy, 0) * xsh + tl.where(ok, xx, 0) * xsw, mask=ok,
                        other=0.0).to(tl.float32)
            acc += tl.load(wa_ptr + c * 9 + k) * v
    else:
        cb = c - half
        acc += tl.load(bb_ptr + cb)
        i = (y * oh) // H
        j = (x * ow) // W
        for k in tl.static_range(9):
            pi = i + (k // 3 - 1)
            pj = j + (k % 3 - 1)
            ok = mask & (pi >= 0) & (pi < oh) & (pj >= 0) & (pj < ow)
            m, _ = _window_max(x_ptr, xbase, xsh, xsw, tl.where(ok, pi, 0), tl.where(ok, pj, 0), H, W, oh, ow,
                               KH, KW, ok)
            acc += tl.load(wb_ptr + cb * 9 + k) * tl.where(ok, m, 0.0)
    tl.store(s_ptr + b * ssb + c * ssc + y * ssh + x * ssw, acc.to(s_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upsample_grad_kernel(ds_ptr, g_ptr, C, H, W, oh, ow, dsb, dsc, dsh, dsw,
                          UH: tl.constexpr, UW: tl.constexpr, BLOCK: tl.constexpr):
    """g[b, cb, i, j] = sum of ds over the nearest-upsample preimage of half-res cell (i, j)."""
    plane = tl.program_id(0)  # over B * half
    half = C // 2
    b = plane // half
    c = plane % half + half
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < oh * ow
    i = offs // ow
    j = offs % ow
    y0 = (i * H + oh - 1) // oh
    y1 = ((i + 1) * H + oh - 1) // oh
    x0 = (j * W + ow - 1) // ow
    x1 = ((j + 1) * W + ow - 1) // ow
    acc = tl.zeros([BLOCK], tl.float32)
    for dy in tl.static_range(UH):
        for dx in tl.static_range(UW):
            yy = y0 + dy
            xx = x0 + dx
            ok = mask & (yy < y1) & (xx < x1)
            acc += tl.load(ds_ptr + b * dsb + c * dsc + tl.where(ok, yy, 0) * dsh + tl.where(ok, xx, 0) * dsw,
                           mask=ok, other=0.0).to(tl.float32)
    tl.store(g_ptr + plane * oh * ow + offs, acc, mask=mask)


@triton.jit
def _pooled_grad_kernel(x_ptr, g_ptr, wb_ptr, dpool_ptr, part_ptr, C, H, W, oh, ow, xsb, xsc, xsh, xsw,
                        nblk, KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):
    """Per half-res cell: dpool = depth-wise input gradient of g; per-block partial dW_b (9) and db_b."""
    plane = tl.program_id(0)  # over B * half
    blk = tl.program_id(1)
    half = C // 2
    b = plane // half
    cb = plane % half
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < oh * ow
    i = offs // ow
    j = offs % ow
    m, _ = _window_max(x_ptr, b * xsb + (cb + half) * xsc, xsh, xsw, i, j, H, W, oh, ow, KH, KW, mask)
    m = tl.where(mask, m, 0.0)
    gbase = g_ptr + plane * oh * ow
    dpool = tl.zeros([BLOCK], tl.float32)
    part = part_ptr + (plane * nblk + blk) * 10
    for k in tl.static_range(9):
        gi = i - (k // 3 - 1)
        gj = j - (k % 3 - 1)
        ok = mask & (gi >= 0) & (gi < oh) & (gj >= 0) & (gj < ow)
        gv = tl.load(gbase + tl.where(ok, gi, 0) * ow + tl.where(ok, gj, 0), mask=ok, other=0.0)
        dpool += tl.load(wb_ptr + cb * 9 + k) * gv
        tl.store(part + k, tl.sum(m * gv, axis=0))
    tl.store(part + 9, tl.sum(tl.load(gbase + offs, mask=mask, other=0.0), axis=0))
    tl.store(dpool_ptr + plane * oh * ow + offs, dpool, mask=mask)


@triton.jit
def _two_scale_dx_kernel(ds_ptr, x_ptr, dx_ptr, wa_ptr, dpool_ptr, part_ptr, C, H, W, oh, ow,
                         dsb, dsc, dsh, dsw, xsb, xsc, xsh, xsw, dxsb, dxsc, dxsh, dxsw, nblk,
                         KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)  # over B * C
    blk = tl.program_id(1)
    b = plane // C
    c = plane % C
    half = C // 2
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = offs // W
    x = offs % W
    xbase = b * xsb + c * xsc
    acc = tl.zeros([BLOCK], tl.float32)
    if c < half:
        dsbase = b * dsb + c * dsc
        g = tl.load(ds_ptr + dsbase + y * dsh + x * dsw, mask=mask, other=0.0).to(tl.float32)
        part = part_ptr + ((b * half + c) * nblk + blk) * 10
        for k in tl.static_range(9):
            dyy = k // 3 - 1
            dxx = k % 3 - 1
            gy = y - dyy
            gx = x - dxx
            ok = mask & (gy >= 0) & (gy < H) & (gx >= 0) & (gx < W)
            gv = tl.load(ds_ptr + dsbase + tl.where(ok, gy, 0) * dsh + tl.where(ok, gx, 0) * dsw, mask=ok,
                         other=0.0).to(tl.float32)
            acc += tl.load(wa_ptr + c * 9 + k) * gv
            xy = y + dyy
            xx = x + dxx
            okx = mask & (xy >= 0) & (xy < H) & (xx >= 0) & (xx < W)
            xv = tl.load(x_ptr + xbase + tl.where(okx, xy, 0) * xsh + tl.where(okx, xx, 0) * xsw, mask=okx,
                         other=0.0).to(tl.float32)
            tl.store(part + k, tl.sum(g * xv, axis=0))
        tl.store(part + 9, tl.sum(g, axis=0))
    else:
        pbase = dpool_ptr + (b * half + c - half) * oh * ow
        i0 = (y * oh) // H
        j0 = (x * ow) // W
        me = y * W + x
        for k in tl.static_range(9):
            i = i0 + (k // 3 - 1)
            j = j0 + (k % 3 - 1)
            ok = mask & (i >= 0) & (i < oh) & (j >= 0) & (j < ow)
            i = tl.where(ok, i, 0)
            j = tl.where(ok, j, 0)
            _, am = _window_max(x_ptr, xbase, xsh, xsw, i, j, H, W, oh, ow, KH, KW, ok)
            hit = ok & (am == me)
            acc += tl.load(pbase + i * ow + j, mask=hit, other=0.0)
    tl.store(dx_ptr + b * dxsb + c * dxsc + y * dxsh + x * dxsw, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_fwd_kernel(g_ptr, x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (tl.maximum(g, 0.0) * x + x).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_bwd_kernel(dy_ptr, g_ptr, x_ptr, dg_ptr, dx_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    d = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    on = g > 0.0
    tl.store(dg_ptr + offs, tl.where(on, d * x, 0.0).to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(dx_ptr + offs, (d * (tl.where(on, g, 0.0) + 1.0)).to(dx_ptr.dtype.element_ty), mask=mask)


def _extents(H: int, W: int) -> dict:
    oh, ow = H // 2, W // 2
    return dict(KH=pool_extent(H, oh), KW=pool_extent(W, ow))


def two_scale_forward(x, wa, ba, wb, bb):
    """The two-scale depth-wise branch s on the Triton kernels (see :class:`~dhkd_kernels.scmm.ops.SCMMBackend`)."""
    B, C, H, W = x.shape
    s = torch.empty_like(x)
    grid = (B * C, triton.cdiv(H * W, BLOCK))
    with device_guard(x):
        _two_scale_fwd_kernel[grid](x, s, wa, ba, wb, bb, C, H, W, H // 2, W // 2, *x.stride(), *s.stride(),
                                    BLOCK=BLOCK, **_extents(H, W))
    return s


def two_scale_backward(ds, x, wa, wb):
    """(dx, dwa, dba, dwb, dbb) of the two-scale branch on the Triton kernels."""
    B, C, H, W = x.shape
    half, oh, ow = C // 2, H // 2, W // 2
    ext = _extents(H, W)
    f32 = dict(dtype=torch.float32, device=x.device)
    nsmall, nfull = triton.cdiv(oh * ow, BLOCK), triton.cdiv(H * W, BLOCK)
    g = torch.empty((B * half, oh * ow), **f32)
    with device_guard(x):
        _upsample_grad_kernel[(B * half, nsmall)](ds, g, C, H, W, oh, ow, *ds.stride(), UH=math.ceil(H / oh),
                                                  UW=math.ceil(W / ow), BLOCK=BLOCK)
    dpool = torch.empty_like(g)
    part_b = torch.empty((B, half, nsmall, 10), **f32)
    with device_guard(x):
        _pooled_grad_kernel[(B * half, nsmall)](x, g, wb, dpool, part_b, C, H, W, oh, ow, *x.stride(), nsmall,
                                                BLOCK=BLOCK, **ext)
    dx = torch.empty_like(x)
    part_a = torch.empty((B, half, nfull, 10), **f32)
    with device_guard(x):
        _two_scale_dx_kernel[(B * C, nfull)](ds, x, dx, wa, dpool, part_a, C, H, W, oh, ow, *ds.stride(),
                                             *x.stride(), *dx.stride(), nfull, BLOCK=BLOCK, **ext)
    pa, pb = part_a.sum((0, 2)), part_b.sum((0, 2))  # (half, 10): 9 weight taps and the bias
    return dx, pa[:, :9].clone(), pa[:, 9].clone(), pb[:, :9].clone(), pb[:, 9].clone()


def gate_forward(G, x):
    """relu(G) * x + x on the Triton kernels."""
    y = torch.empty_like(x)
    n = x.numel()
    with device_guard(x):
        _gate_fwd_kernel[(triton.cdiv(n, 1024),)](G, x, y, n, BLOCK=1024)
    return y


def gate_backward(dy, G, x):
    """(dG, dx) of the gate epilogue on the Triton kernels."""
    dG, dx = torch.empty_like(x), torch.empty_like(x)
    n = x.numel()
    with device_guard(x):
        _gate_bwd_kernel[(triton.cdiv(n, 1024),)](dy, G, x, dG, dx, n, BLOCK=1024)
    return dG, dx
