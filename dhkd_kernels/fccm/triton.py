"""FCCM backend in Triton (GPU, or the interpreter on CPU tensors with TRITON_INTERPRET=1).

Implements the backend protocol of ``ops.py``. One program per (plane, block of pixels); bias gradients are
per-block partial sums reduced after the launch (deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._ext import device_guard
from .cpu import pooled_empty

BLOCK = 256


@triton.jit
def _window(z_ptr, zbase, zsh, zsw, i, j, bias, mask):
    """Max of z + bias over the 2×2 window at (2i, 2j) (first max in scan order, last NaN) and its slot."""
    m = tl.full(i.shape, float("-inf"), tl.float32)
    k = tl.zeros(i.shape, tl.int32)
    for t in tl.static_range(4):
        v = tl.load(z_ptr + zbase + (2 * i + t // 2) * zsh + (2 * j + t % 2) * zsw, mask=mask,
                    other=float("-inf")).to(tl.float32) + bias
        take = (v > m) | (v != v)
        m = tl.where(take, v, m)
        k = tl.where(take, t, k)
    return m, k


@triton.jit
def _pool_relu_fwd_kernel(z_ptr, bias_ptr, out_ptr, C, oh, ow, zsb, zsc, zsh, zsw, osb, osc, osh, osw,
                          BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < oh * ow
    i = offs // ow
    j = offs % ow
    m, _ = _window(z_ptr, b * zsb + c * zsc, zsh, zsw, i, j, tl.load(bias_ptr + c), mask)
    out = tl.where((m > 0.0) | (m != m), m, 0.0)
    tl.store(out_ptr + b * osb + c * osc + i * osh + j * osw, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pool_relu_bwd_kernel(dout_ptr, z_ptr, bias_ptr, dz_ptr, part_ptr, C, H, W, oh, ow, nblk,
                          dsb, dsc, dsh, dsw, zsb, zsc, zsh, zsw, dzsb, dzsc, dzsh, dzsw, BLOCK: tl.constexpr):
    """Over input pixels: dz = dout of the pixel's window when it is that window's argmax and ReLU passed."""
    plane = tl.program_id(0)
    blk = tl.program_id(1)
    b = plane // C
    c = plane % C
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = offs // W
    x = offs % W
    inside = mask & (y // 2 < oh) & (x // 2 < ow)
    i = tl.where(inside, y // 2, 0)
    j = tl.where(inside, x // 2, 0)
    m, k = _window(z_ptr, b * zsb + c * zsc, zsh, zsw, i, j, tl.load(bias_ptr + c), inside)
    g = tl.load(dout_ptr + b * dsb + c * dsc + i * dsh + j * dsw, mask=inside, other=0.0).to(tl.float32)
    g = tl.where(inside & (m > 0.0) & (k == (y % 2) * 2 + x % 2), g, 0.0)
    tl.store(dz_ptr + b * dzsb + c * dzsc + y * dzsh + x * dzsw, g.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(part_ptr + plane * nblk + blk, tl.sum(g, axis=0))


@triton.jit
def _gelu_and_grad(u):
    cdf = 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476))
    return u * cdf, cdf + u * 0.3989422804014327 * tl.exp(-0.5 * u * u)


@triton.jit
def _bias_gelu_fwd_kernel(h_ptr, bias_ptr, out_ptr, C, H, W, hsb, hsc, hsh, hsw, osb, osc, osh, osw,
                          BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = offs // W
    x = offs % W
    u = tl.load(h_ptr + b * hsb + c * hsc + y * hsh + x * hsw, mask=mask, other=0.0).to(tl.float32)
    out, _ = _gelu_and_grad(u + tl.load(bias_ptr + c))
    tl.store(out_ptr + b * osb + c * osc + y * osh + x * osw, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(dout_ptr, h_ptr, bias_ptr, dh_ptr, part_ptr, C, H, W, nblk, dsb, dsc, dsh, dsw,
                          hsb, hsc, hsh, hsw, dhsb, dhsc, dhsh, dhsw, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    blk = tl.program_id(1)
    b = plane // C
    c = plane % C
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = offs // W
    x = offs % W
    u = tl.load(h_ptr + b * hsb + c * hsc + y * hsh + x * hsw, mask=mask, other=0.0).to(tl.float32)
    _, d = _gelu_and_grad(u + tl.load(bias_ptr + c))
    g = tl.load(dout_ptr + b * dsb + c * dsc + y * dsh + x * dsw, mask=mask, other=0.0).to(tl.float32) * d
    g = tl.where(mask, g, 0.0)
    tl.store(dh_ptr + b * dhsb + c * dhsc + y * dhsh + x * dhsw, g.to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(part_ptr + plane * nblk + blk, tl.sum(g, axis=0))


def pool_relu_forward(z, bias):
    """relu(maxpool2x2(z + bias)) on the Triton kernels (see :class:`~dhkd_kernels.fccm.ops.FCCMBackend`)."""
    B, C, H, W = z.shape
    out = pooled_empty(z)
    grid = (B * C, triton.cdiv(out.shape[2] * out.shape[3], BLOCK))
    with device_guard(z):
        _pool_relu_fwd_kernel[grid](z, bias, out, C, H // 2, W // 2, *z.stride(), *out.stride(), BLOCK=BLOCK)
    return out


def pool_relu_backward(dout, z, bias):
    """(dz, dbias) of pool_relu on the Triton kernels."""
    B, C, H, W = z.shape
    dz = torch.empty_like(z)
    nblk = triton.cdiv(H * W, BLOCK)
    part = torch.empty((B, C, nblk), dtype=torch.float32, device=z.device)
    with device_guard(z):
        _pool_relu_bwd_kernel[(B * C, nblk)](dout, z, bias, dz, part, C, H, W, H // 2, W // 2, nblk, *dout.stride(),
                                             *z.stride(), *dz.stride(), BLOCK=BLOCK)
    return dz, part.sum((0, 2))


def bias_gelu_forward(h, bias):
    """gelu(h + bias) on the Triton kernels."""
    B, C, H, W = h.shape
    out = torch.empty_like(h)
    grid = (B * C, triton.cdiv(H * W, BLOCK))
    with device_guard(h):
        _bias_gelu_fwd_kernel[grid](h, bias, out, C, H, W, *h.stride(), *out.stride(), BLOCK=BLOCK)
    return out


def bias_gelu_backward(dout, h, bias):
    """(dh, dbias) of bias_gelu on the Triton kernels."""
    B, C, H, W = h.shape
    dh = torch.empty_like(h)
    nblk = triton.cdiv(H * W, BLOCK)
    part = torch.empty((B, C, nblk), dtype=torch.float32, device=h.device)
    with device_guard(h):
        _bias_gelu_bwd_kernel[(B * C, nblk)](dout, h, bias, dh, part, C, H, W, nblk, *dout.stride(), *h.stride(),
                                             *dh.stride(), BLOCK=BLOCK)
    return dh, part.sum((0, 2))
