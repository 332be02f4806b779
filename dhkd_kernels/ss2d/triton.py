"""Triton backend of the fused SS2D scan (forward and backward).

One program owns (batch element, tile of BLOCK_D channels) and runs the four scan directions one after
the other, so the cross-merge is a plain read-add-write of its own slice of y (no atomics). Each direction
walks the sequence in chunks of BLOCK_T steps: the chunk's u, delta, B, C rows are gathered with index
arithmetic (row-major, column-major, reversed), the recurrence h_t = a_t·h_{t-1} + b_t over the chunk is an
``tl.associative_scan`` on [BLOCK_T, BLOCK_D, BLOCK_N] tiles, and the chunk's last state is carried to the
next chunk in registers. exp is computed as exp2 with log2(e) folded into A once per program.

The backward recomputes: a forward pass stores the state entering each chunk in an fp32 buffer of
(L / BLOCK_T)·D·N values per batch element (reused by the four directions), then a reverse walk over the
chunks rebuilds the chunk's states from its checkpoint, scans the adjoint g_t = dy_t·C_t + a_{t+1}·g_{t+1}
backwards and forms all gradients. Gradients reduced over channels (dB, dC) are written as per-channel-tile
partials and summed with torch afterwards; dA, dD and ddelta_bias are per-batch partials. Everything is
deterministic.

All arithmetic is fp32: values are converted right after ``tl.load`` and back only at ``tl.store``.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .._ext import device_guard

LOG2E = tl.constexpr(math.log2(math.e))
K = tl.constexpr(4)  # SS2D directions
_ELEMS_PER_TILE = 2048  # BLOCK_T * BLOCK_D * BLOCK_N budget: ~16 fp32 registers per thread per live tile at 4 warps
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _linear_combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2) for h -> a·h + x: the composition is (a1·a2, a2·x1 + x2)."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _adjoint_combine(fa_r, p_r, g_r, fa_l, p_l, g_l):
    """Backward recurrence g_t = x_t + a_{t+1}·g_{t+1}, scanned from the end (reverse=True).

    A segment [i..j] is summarised by (a_i, a_{i+1}···a_j, g_i with nothing beyond j). The accumulator
    (first three arguments) is the later segment, the new element (last three) the earlier one.
    """
    link = p_l * fa_r
    return fa_l, link * p_r, g_l + link * g_r


@triton.jit
def _pixel_index(t, L, H, W, k: tl.constexpr):
    """Pixel (row-major index in the H×W map) visited at step t of direction k."""
    if k >= 2:
        s = L - 1 - t
    else:
        s = t
    if k % 2 == 1:
        p = (s % H) * W + s // H
    else:
        p = s
    return tl.where((t >= 0) & (t < L), p, 0)


@triton.jit
def _softplus(z):
    """softplus(z) = log1p(exp(z)) for z ≤ 20 (log1p done exactly via the w = 1 + e trick), z above."""
    e = tl.exp2(tl.minimum(z, 20.0) * LOG2E)
    w = 1.0 + e
    exact = w == 1.0  # e below fp32 resolution: log1p(e) = e
    sp = tl.where(exact, e, tl.log(w) * (e / tl.where(exact, 1.0, w - 1.0)))
    return tl.where(z > 20.0, z, sp)


@triton.jit
def _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, row_ok, d_ok, n_ok,
                D, N, k: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Gather one chunk of direction k: u, z = delta + bias, dt (zero on padding), B, C as fp32."""
    m_td = row_ok[:, None] & d_ok[None, :]
    m_tn = row_ok[:, None] & n_ok[None, :]
    u = tl.load(u_ptr + p[:, None] * D + offs_d[None, :], mask=m_td, other=0.0).to(tl.float32)
    z = tl.load(delta_ptr + (p[:, None] * K + k) * D + offs_d[None, :], mask=m_td, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z = z + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(z)
    else:
        dt = z
    dt = tl.where(m_td, dt, 0.0)  # padded rows/channels: a = 1, b = 0, the state passes through unchanged
    bm = tl.load(b_ptr + (p[:, None] * K + k) * N + offs_n[None, :], mask=m_tn, other=0.0).to(tl.float32)
    cm = tl.load(c_ptr + (p[:, None] * K + k) * N + offs_n[None, :], mask=m_tn, other=0.0).to(tl.float32)
    return u, z, dt, bm, cm


@triton.jit
def _chunk_states(h0, dt, u, bm, a2):
    """States of one chunk from the state h0 entering it: returns (a, b, h), each [T, BLOCK_D, BLOCK_N]."""
    a = tl.exp2(dt[:, :, None] * a2[None, :, :])
    bx = (dt * u)[:, :, None] * bm[:, None, :]
    a_cum, x_cum = tl.associative_scan((a, bx), 0, _linear_combine)
    return a, bx, a_cum * h0[None, :, :] + x_cum


@triton.jit
def _row(x, rows, r):
    """Row r of a [T, ...] tile (a masked sum: register tiles cannot be indexed)."""
    return tl.sum(tl.where((rows == r)[:, None, None], x, 0.0), axis=0)


@triton.jit
def _ss2d_fwd_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, yacc_ptr, y_ptr,
                     L, H, W, D, N,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_T)
    d_ok = offs_d < D
    n_ok = offs_n < N
    u_ptr += pid_b * L * D
    yacc_ptr += pid_b * L * D
    y_ptr += pid_b * L * D
    delta_ptr += pid_b * L * K * D
    b_ptr += pid_b * L * K * N
    c_ptr += pid_b * L * K * N
    n_chunks = tl.cdiv(L, BLOCK_T)
    for k in tl.static_range(K):
        m_dn = d_ok[:, None] & n_ok[None, :]
        a2 = tl.load(a_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0) * LOG2E
        bias = tl.load(bias_ptr + k * D + offs_d, mask=d_ok, other=0.0) if HAS_BIAS else offs_d * 0.0
        dskip = tl.load(dskip_ptr + k * D + offs_d, mask=d_ok, other=0.0) if HAS_D else offs_d * 0.0
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for c in range(n_chunks):
            t = c * BLOCK_T + rows
            row_ok = t < L
            p = _pixel_index(t, L, H, W, k)
            u, _, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n,
                                           row_ok, d_ok, n_ok, D, N, k, HAS_BIAS, SOFTPLUS)
            _, _, hs = _chunk_states(h, dt, u, bm, a2)
            h = _row(hs, rows, BLOCK_T - 1)  # padded rows only repeat the last real state
            y = tl.sum(hs * cm[:, None, :], axis=2)
            if HAS_D:
                y += u * dskip[None, :]
            y_offs = p[:, None] * D + offs_d[None, :]
            m_td = row_ok[:, None] & d_ok[None, :]
            if k > 0:
                y += tl.load(yacc_ptr + y_offs, mask=m_td, other=0.0)
            if k == K - 1:
                tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=m_td)
            else:
                tl.store(yacc_ptr + y_offs, y, mask=m_td)
        tl.debug_barrier()  # direction k's y stores are visible to every thread before k + 1 reads them


@triton.jit
def _ss2d_bwd_kernel(dy_ptr, u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, ckpt_ptr,
                     duacc_ptr, du_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
                     L, H, W, D, N,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    n_batch = tl.num_programs(0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_T)
    d_ok = offs_d < D
    n_ok = offs_n < N
    m_dn = d_ok[:, None] & n_ok[None, :]
    n_chunks = tl.cdiv(L, BLOCK_T)
    dy_ptr += pid_b * L * D
    u_ptr += pid_b * L * D
    duacc_ptr += pid_b * L * D
    du_ptr += pid_b * L * D
    delta_ptr += pid_b * L * K * D
    ddelta_ptr += pid_b * L * K * D
    b_ptr += pid_b * L * K * N
    c_ptr += pid_b * L * K * N
    db_ptr += (pid_d * n_batch + pid_b) * L * K * N  # partials (n_dtiles, batch, L, K, N)
    dc_ptr += (pid_d * n_batch + pid_b) * L * K * N
    ckpt_ptr += pid_b * n_chunks * D * N
    da_ptr += pid_b * K * D * N  # per-batch partials (batch, K, D, N) and (batch, K, D)
    dd_ptr += pid_b * K * D
    dbias_ptr += pid_b * K * D
    ckpt_offs = offs_d[:, None] * N + offs_n[None, :]
    for k in tl.static_range(K):
        a_raw = tl.load(a_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0)
        a2 = a_raw * LOG2E
        bias = tl.load(bias_ptr + k * D + offs_d, mask=d_ok, other=0.0) if HAS_BIAS else offs_d * 0.0
        dskip = tl.load(dskip_ptr + k * D + offs_d, mask=d_ok, other=0.0) if HAS_D else offs_d * 0.0
        # 1) forward recompute, keeping the state that enters every chunk
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for c in range(n_chunks):
            tl.store(ckpt_ptr + c * D * N + ckpt_offs, h, mask=m_dn)
            t = c * BLOCK_T + rows
            p = _pixel_index(t, L, H, W, k)
            u, _, dt, bm, _ = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n,
                                          t < L, d_ok, n_ok, D, N, k, HAS_BIAS, SOFTPLUS)
            _, _, hs = _chunk_states(h, dt, u, bm, a2)
            h = _row(hs, rows, BLOCK_T - 1)
        tl.debug_barrier()  # checkpoints visible to all threads
        # 2) reverse walk over the chunks
        g_in = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # a_{t+1}·g_{t+1} flowing into the chunk's last step
        d_a = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
        d_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        for ci in range(n_chunks):
            c = n_chunks - 1 - ci
            t = c * BLOCK_T + rows
            row_ok = t < L
            m_td = row_ok[:, None] & d_ok[None, :]
            m_tn = row_ok[:, None] & n_ok[None, :]
            p = _pixel_index(t, L, H, W, k)
            u, z, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n,
                                           row_ok, d_ok, n_ok, D, N, k, HAS_BIAS, SOFTPLUS)
            h0 = tl.load(ckpt_ptr + c * D * N + ckpt_offs, mask=m_dn, other=0.0)
            a, bx, hs = _chunk_states(h0, dt, u, bm, a2)
            pix_d = p[:, None] * D + offs_d[None, :]
            dy = tl.load(dy_ptr + pix_d, mask=m_td, other=0.0).to(tl.float32)
            x = dy[:, :, None] * cm[:, None, :] + tl.where((rows == BLOCK_T - 1)[:, None, None], g_in[None], 0.0)
            _, _, g = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), x), 0, _adjoint_combine,
                                          reverse=True)
            g_in = _row(a * g, rows, 0)
            pix_n = (p[:, None] * K + k) * N + offs_n[None, :]
            tl.store(dc_ptr + pix_n, tl.sum(dy[:, :, None] * hs, axis=1), mask=m_tn)
            tl.store(db_ptr + pix_n, tl.sum(g * (dt * u)[:, :, None], axis=1), mask=m_tn)
            decay = g * (hs - bx)  # g_t·a_t·h_{t-1}, with a_t·h_{t-1} = h_t - b_t
            d_a += tl.sum(decay * dt[:, :, None], axis=0)
            gb = tl.sum(g * bm[:, None, :], axis=2)
            ddt = gb * u + tl.sum(decay * a_raw[None, :, :], axis=2)
            du = gb * dt
            if HAS_D:
                du += dy * dskip[None, :]
            d_skip += tl.sum(dy * u, axis=0)
            if SOFTPLUS:
                zc = tl.minimum(tl.maximum(z, -80.0), 20.0)  # sigmoid(-80) ~ 2e-35: no exp overflow below
                sig = 1.0 / (1.0 + tl.exp2(-zc * LOG2E))
                ddt = tl.where(z > 20.0, ddt, ddt * sig)
            ddt = tl.where(m_td, ddt, 0.0)
            d_bias += tl.sum(ddt, axis=0)
            tl.store(ddelta_ptr + (p[:, None] * K + k) * D + offs_d[None, :],
                     ddt.to(ddelta_ptr.dtype.element_ty), mask=m_td)
            if k > 0:
                du += tl.load(duacc_ptr + pix_d, mask=m_td, other=0.0)
            if k == K - 1:
                tl.store(du_ptr + pix_d, du.to(du_ptr.dtype.element_ty), mask=m_td)
            else:
                tl.store(duacc_ptr + pix_d, du, mask=m_td)
        tl.store(da_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], d_a, mask=m_dn)
        tl.store(dd_ptr + k * D + offs_d, d_skip, mask=d_ok)
        tl.store(dbias_ptr + k * D + offs_d, d_bias, mask=d_ok)
        tl.debug_barrier()  # du accumulation and checkpoint reuse by the next direction


def _blocks(L: int, Dch: int, N: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, BLOCK_N): the chunk length and channel tile that keep a tile within budget."""
    block_n = triton.next_power_of_2(N)
    block_t = min(16, triton.next_power_of_2(L))
    while block_t > 1 and block_t * block_n > _ELEMS_PER_TILE:
        block_t //= 2
    block_d = max(1, min(triton.next_power_of_2(Dch), _ELEMS_PER_TILE // (block_t * block_n)))
    return block_t, block_d, block_n


def _launch_options() -> dict:
    return {} if _INTERPRET else {"num_warps": 4}


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
    """y (batch, H, W, D) of the fused SS2D scan; see the calling convention in ``ops.py``."""
    bsz, H, W, Dch = u.shape
    L, N = H * W, A.shape[2]
    block_t, block_d, block_n = _blocks(L, Dch, N)
    out_dtype = torch.float32 if out_float else u.dtype
    y = torch.empty(u.shape, dtype=out_dtype, device=u.device)
    yacc = y if out_dtype == torch.float32 else torch.empty(u.shape, dtype=torch.float32, device=u.device)
    A = A.float().contiguous()
    dskip = A if D is None else D.float().contiguous()
    bias = A if delta_bias is None else delta_bias.float().contiguous()
    grid = (bsz, triton.cdiv(Dch, block_d))
    with device_guard(u):
        _ss2d_fwd_kernel[grid](u, delta, A, B, C, dskip, bias, yacc, y, L, H, W, Dch, N,
                               HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                               BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n, **_launch_options())
    return y


def backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias) of the fused SS2D scan; see ``ops.py``."""
    bsz, H, W, Dch = u.shape
    L, N = H * W, A.shape[2]
    block_t, block_d, block_n = _blocks(L, Dch, N)
    n_dtiles = triton.cdiv(Dch, block_d)
    dev, f32 = u.device, torch.float32
    dy = dy.contiguous()
    A = A.float().contiguous()
    dskip = A if D is None else D.float().contiguous()
    bias = A if delta_bias is None else delta_bias.float().contiguous()
    ckpt = torch.empty((bsz, triton.cdiv(L, block_t), Dch, N), dtype=f32, device=dev)
    du = torch.empty_like(u)
    duacc = du if u.dtype == f32 else torch.empty(u.shape, dtype=f32, device=dev)
    ddelta = torch.empty_like(delta)
    db_part = torch.empty((n_dtiles,) + tuple(B.shape), dtype=f32, device=dev)
    dc_part = torch.empty((n_dtiles,) + tuple(C.shape), dtype=f32, device=dev)
    da_part = torch.empty((bsz, K.value, Dch, N), dtype=f32, device=dev)
    dd_part = torch.empty((bsz, K.value, Dch), dtype=f32, device=dev)
    dbias_part = torch.empty((bsz, K.value, Dch), dtype=f32, device=dev)
    grid = (bsz, n_dtiles)
    with device_guard(u):
        _ss2d_bwd_kernel[grid](dy, u, delta, A, B, C, dskip, bias, ckpt, duacc, du, ddelta,
                               da_part, db_part, dc_part, dd_part, dbias_part, L, H, W, Dch, N,
                               HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                               BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n, **_launch_options())
    return (du, ddelta, da_part.sum(0), db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype),
            dd_part.sum(0), dbias_part.sum(0))
