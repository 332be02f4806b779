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

import torch
import triton
import triton.language as tl

from .._ext import device_guard
from ..triton_scan import (LOG2E, adjoint_combine, chunk_states, launch_options, linear_combine, sigmoid, step_dt,
                           tile_blocks, tile_row)

K = tl.constexpr(4)  # SS2D directions


@triton.jit
def _pixel_index(t, L, H, W, k):
    """Pixel (row-major index in the H×W map) visited at step t of direction k (0 for steps outside 0..L-1)."""
    s = tl.where(k >= 2, L - 1 - t, t)
    p = tl.where(k % 2 == 1, (s % H) * W + s // H, s)
    return tl.where((t >= 0) & (t < L), p, 0)


@triton.jit
def _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, row_ok, d_ok, n_ok,
                D, N, k, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Gather one chunk of direction k: u, z = delta + bias, dt (zero on padding), B, C as fp32."""
    m_td = row_ok[:, None] & d_ok[None, :]
    m_tn = row_ok[:, None] & n_ok[None, :]
    u = tl.load(u_ptr + p[:, None] * D + offs_d[None, :], mask=m_td, other=0.0).to(tl.float32)
    z = tl.load(delta_ptr + (p[:, None] * K + k) * D + offs_d[None, :], mask=m_td, other=0.0).to(tl.float32)
    z, dt = step_dt(z, bias, m_td, HAS_BIAS, SOFTPLUS)
    bm = tl.load(b_ptr + (p[:, None] * K + k) * N + offs_n[None, :], mask=m_tn, other=0.0).to(tl.float32)
    cm = tl.load(c_ptr + (p[:, None] * K + k) * N + offs_n[None, :], mask=m_tn, other=0.0).to(tl.float32)
    return u, z, dt, bm, cm


@triton.jit
def _program_setup(a_ptr, bias_ptr, dskip_ptr, D, N, n_chunks, seg_chunks, HAS_BIAS: tl.constexpr,
                   HAS_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Indices of a program of grid (batch·4, channel tiles, segments) and its direction's parameters: pid_bk,
    the batch item b, seg, k, offs_d, offs_n, d_ok, n_ok, m_dn, rows (a chunk's steps), A and A·log2(e), bias
    and D (zero when absent), and the segment's chunks c0 .. c1 - 1."""
    pid_bk = tl.program_id(0)
    seg = tl.program_id(2)
    k = pid_bk % K
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    n_ok = offs_n < N
    m_dn = d_ok[:, None] & n_ok[None, :]
    a_raw = tl.load(a_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0)
    bias = tl.load(bias_ptr + k * D + offs_d, mask=d_ok, other=0.0) if HAS_BIAS else offs_d * 0.0
    dskip = tl.load(dskip_ptr + k * D + offs_d, mask=d_ok, other=0.0) if HAS_D else offs_d * 0.0
    c0 = seg * seg_chunks
    c1 = tl.minimum(c0 + seg_chunks, n_chunks)
    b = (pid_bk // K).to(tl.int64)
    a2 = a_raw * LOG2E
    rows = tl.arange(0, BLOCK_T)
    return pid_bk, b, seg, k, offs_d, offs_n, d_ok, n_ok, m_dn, rows, a_raw, a2, bias, dskip, c0, c1


@triton.jit
def _batch_inputs(u_ptr, delta_ptr, b_ptr, c_ptr, b, L, D, N):
    """Pointers to batch item b of u (b, L, D), delta (b, L, 4, D), B and C (b, L, 4, N)."""
    return u_ptr + b * L * D, delta_ptr + b * L * K * D, b_ptr + b * L * K * N, c_ptr + b * L * K * N


@triton.jit
def _segment_summary_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, bias_ptr, dy_ptr, hend_ptr, dtsum_ptr, gout_ptr,
                            L, H, W, D, N, n_chunks, seg_chunks, n_seg,
                            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, WITH_ADJOINT: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 1: per (batch, direction, channel tile, segment), the segment's state from a zero entering state
    (hend), its sum of dt (the decay across it is exp(A·sum dt)) and, for the backward, the adjoint it passes
    to the previous segment from a zero carry (gout = a_first·g_first)."""
    pid_bk, b, seg, k, offs_d, offs_n, d_ok, n_ok, m_dn, rows, a_raw, a2, bias, no_skip, c0, c1 = _program_setup(
        a_ptr, bias_ptr, bias_ptr, D, N, n_chunks, seg_chunks, HAS_BIAS, False, BLOCK_T, BLOCK_D, BLOCK_N)
    u_ptr, delta_ptr, b_ptr, c_ptr = _batch_inputs(u_ptr, delta_ptr, b_ptr, c_ptr, b, L, D, N)
    dy_ptr += b * L * D
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c in range(c0, c1):
        t = c * BLOCK_T + rows
        p = _pixel_index(t, L, H, W, k)
        u, z, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, t < L, d_ok, n_ok,
                                       D, N, k, HAS_BIAS, SOFTPLUS)
        hs = chunk_states(h, dt, u, bm, a2, True)[2]
        h = tile_row(hs, rows, BLOCK_T - 1)  # padded rows only repeat the last real state
        dt_sum += tl.sum(dt, axis=0)
    out = (pid_bk * n_seg + seg).to(tl.int64)
    tl.store(hend_ptr + out * D * N + offs_d[:, None] * N + offs_n[None, :], h, mask=m_dn)
    tl.store(dtsum_ptr + out * D + offs_d, dt_sum, mask=d_ok)
    if WITH_ADJOINT:
        g_in = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for ci in range(c1 - c0):
            c = c1 - 1 - ci
            t = c * BLOCK_T + rows
            row_ok = t < L
            p = _pixel_index(t, L, H, W, k)
            u, z, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, row_ok, d_ok,
                                           n_ok, D, N, k, HAS_BIAS, SOFTPLUS)
            dy = tl.load(dy_ptr + p[:, None] * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                         other=0.0).to(tl.float32)
            a = tl.exp2(dt[:, :, None] * a2[None, :, :])
            x = dy[:, :, None] * cm[:, None, :] + tl.where((rows == BLOCK_T - 1)[:, None, None], g_in[None], 0.0)
            g = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), x), 0, adjoint_combine,
                                    reverse=True)[2]
            g_in = tile_row(a * g, rows, 0)
        tl.store(gout_ptr + out * D * N + offs_d[:, None] * N + offs_n[None, :], g_in, mask=m_dn)


@triton.jit
def _segment_carry_kernel(a_ptr, dtsum_ptr, val_ptr, out_ptr, D, N, n_seg, REVERSE: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 2: per (batch, direction, channel tile), the value entering every segment of the recurrence
    s_next = exp(A·dtsum[seg])·s + val[seg] taken over the segments in order (REVERSE: from the last one),
    from s = 0: out[seg] = the state entering seg (forward h) or the adjoint carried into seg's last step.
    One associative scan over the (at most BLOCK_S) segments."""
    pid_bk = tl.program_id(0)
    k = pid_bk % K
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    e = tl.arange(0, BLOCK_S)  # position in scan order
    d_ok = offs_d < D
    m_dn = d_ok[:, None] & (offs_n < N)[None, :]
    a2 = tl.load(a_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0) * LOG2E
    seg = n_seg - 1 - e if REVERSE else e
    e_ok = e < n_seg
    rows = (pid_bk * n_seg + seg).to(tl.int64)
    m_sd = e_ok[:, None] & d_ok[None, :]
    m_sdn = e_ok[:, None, None] & m_dn[None, :, :]
    dn = offs_d[:, None] * N + offs_n[None, :]
    dts = tl.load(dtsum_ptr + rows[:, None] * D + offs_d[None, :], mask=m_sd, other=0.0)
    val = tl.load(val_ptr + rows[:, None, None] * D * N + dn[None, :, :], mask=m_sdn, other=0.0)
    decay = tl.exp2(dts[:, :, None] * a2[None, :, :])
    incl = tl.associative_scan((decay, val), 0, linear_combine)[1]  # state after each segment, from 0
    # the state entering position e is the state after position e - 1; position 0 enters with 0
    if REVERSE:
        nxt = seg - 1
        first = pid_bk * n_seg + n_seg - 1
    else:
        nxt = seg + 1
        first = pid_bk * n_seg
    nxt_rows = (pid_bk * n_seg + nxt).to(tl.int64)
    m_next = ((e + 1) < n_seg)[:, None, None] & m_dn[None, :, :]
    tl.store(out_ptr + nxt_rows[:, None, None] * D * N + dn[None, :, :], incl, mask=m_next)
    first = first.to(tl.int64)
    tl.store(out_ptr + first * D * N + dn, tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32), mask=m_dn)


@triton.jit
def _ss2d_fwd_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, hin_ptr, ys_ptr,
                     L, H, W, D, N, n_chunks, seg_chunks, n_seg,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 3 of the forward: the segment's outputs from its true entering state, written per direction into
    ys (batch·4, L, D) in pixel order (summed over directions afterwards: deterministic, no atomics)."""
    pid_bk, b, seg, k, offs_d, offs_n, d_ok, n_ok, m_dn, rows, a_raw, a2, bias, dskip, c0, c1 = _program_setup(
        a_ptr, bias_ptr, dskip_ptr, D, N, n_chunks, seg_chunks, HAS_BIAS, HAS_D, BLOCK_T, BLOCK_D, BLOCK_N)
    u_ptr, delta_ptr, b_ptr, c_ptr = _batch_inputs(u_ptr, delta_ptr, b_ptr, c_ptr, b, L, D, N)
    ys_ptr += pid_bk.to(tl.int64) * L * D
    h = tl.load(hin_ptr + (pid_bk * n_seg + seg).to(tl.int64) * D * N + offs_d[:, None] * N + offs_n[None, :],
                mask=m_dn, other=0.0)
    for c in range(c0, c1):
        t = c * BLOCK_T + rows
        row_ok = t < L
        p = _pixel_index(t, L, H, W, k)
        u, z, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, row_ok, d_ok,
                                       n_ok, D, N, k, HAS_BIAS, SOFTPLUS)
        hs = chunk_states(h, dt, u, bm, a2, True)[2]
        h = tile_row(hs, rows, BLOCK_T - 1)
        y = tl.sum(hs * cm[:, None, :], axis=2)
        if HAS_D:
            y += u * dskip[None, :]
        tl.store(ys_ptr + p[:, None] * D + offs_d[None, :], y, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _ss2d_bwd_kernel(dy_ptr, u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, hin_ptr, gin_ptr,
                     ckpt_ptr, dus_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
                     L, H, W, D, N, n_chunks, seg_chunks, n_seg,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 3 of the backward, per (batch, direction, channel tile, segment): recompute the states of the
    segment's chunks from its true entering state (chunk checkpoints in ckpt), then walk the chunks backwards
    from the true adjoint carry, forming every gradient. du is written per direction (dus, summed afterwards);
    dB/dC per channel tile, dA/dD/ddelta_bias per segment as partials summed with torch: deterministic."""
    pid_bk, b, seg, k, offs_d, offs_n, d_ok, n_ok, m_dn, rows, a_raw, a2, bias, dskip, c0, c1 = _program_setup(
        a_ptr, bias_ptr, dskip_ptr, D, N, n_chunks, seg_chunks, HAS_BIAS, HAS_D, BLOCK_T, BLOCK_D, BLOCK_N)
    u_ptr, delta_ptr, b_ptr, c_ptr = _batch_inputs(u_ptr, delta_ptr, b_ptr, c_ptr, b, L, D, N)
    pid_d = tl.program_id(1)
    n_batch = tl.num_programs(0) // K
    dy_ptr += b * L * D
    dus_ptr += pid_bk.to(tl.int64) * L * D
    ddelta_ptr += b * L * K * D
    db_ptr += (pid_d * n_batch + b) * L * K * N  # partials (n_dtiles, batch, L, K, N)
    dc_ptr += (pid_d * n_batch + b) * L * K * N
    ckpt_ptr += pid_bk.to(tl.int64) * n_chunks * D * N
    part = (pid_bk * n_seg + seg).to(tl.int64)  # partials (batch·4, n_seg, D[, N])
    dn = offs_d[:, None] * N + offs_n[None, :]
    # 1) forward recompute from the segment's entering state, keeping the state that enters every chunk
    h = tl.load(hin_ptr + part * D * N + dn, mask=m_dn, other=0.0)
    for c in range(c0, c1):
        tl.store(ckpt_ptr + c * D * N + dn, h, mask=m_dn)
        t = c * BLOCK_T + rows
        p = _pixel_index(t, L, H, W, k)
        u, z, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, t < L, d_ok, n_ok,
                                       D, N, k, HAS_BIAS, SOFTPLUS)
        hs = chunk_states(h, dt, u, bm, a2, True)[2]
        h = tile_row(hs, rows, BLOCK_T - 1)
    tl.debug_barrier()  # checkpoints visible to all threads
    # 2) reverse walk over the chunks from the adjoint carried into the segment's last step
    g_in = tl.load(gin_ptr + part * D * N + dn, mask=m_dn, other=0.0)
    d_a = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    d_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ci in range(c1 - c0):
        c = c1 - 1 - ci
        t = c * BLOCK_T + rows
        row_ok = t < L
        m_td = row_ok[:, None] & d_ok[None, :]
        m_tn = row_ok[:, None] & n_ok[None, :]
        p = _pixel_index(t, L, H, W, k)
        u, z, dt, bm, cm = _load_chunk(u_ptr, delta_ptr, b_ptr, c_ptr, bias, p, offs_d, offs_n, row_ok, d_ok,
                                       n_ok, D, N, k, HAS_BIAS, SOFTPLUS)
        h0 = tl.load(ckpt_ptr + c * D * N + dn, mask=m_dn, other=0.0)
        a, bx, hs = chunk_states(h0, dt, u, bm, a2, True)
        pix_d = p[:, None] * D + offs_d[None, :]
        dy = tl.load(dy_ptr + pix_d, mask=m_td, other=0.0).to(tl.float32)
        x = dy[:, :, None] * cm[:, None, :] + tl.where((rows == BLOCK_T - 1)[:, None, None], g_in[None], 0.0)
        g = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), x), 0, adjoint_combine, reverse=True)[2]
        g_in = tile_row(a * g, rows, 0)
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
            ddt = tl.where(z > 20.0, ddt, ddt * sigmoid(z))
        ddt = tl.where(m_td, ddt, 0.0)
        d_bias += tl.sum(ddt, axis=0)
        tl.store(ddelta_ptr + (p[:, None] * K + k) * D + offs_d[None, :], ddt.to(ddelta_ptr.dtype.element_ty),
                 mask=m_td)
        tl.store(dus_ptr + pix_d, du, mask=m_td)
    tl.store(da_ptr + part * D * N + dn, d_a, mask=m_dn)
    tl.store(dd_ptr + part * D + offs_d, d_skip, mask=d_ok)
    tl.store(dbias_ptr + part * D + offs_d, d_bias, mask=d_ok)


MAX_SEGMENTS = 16  # segments per (batch, direction, channel tile): the carry pass scans them in one tile


def _plan(L: int, Dch: int, N: int) -> dict:
    """Blocks and the segmentation of the scan: n_chunks chunks of BLOCK_T steps, grouped into n_seg ≤
    MAX_SEGMENTS segments of seg_chunks chunks (one program each per batch, direction and channel tile)."""
    block_t, block_d, block_n = tile_blocks(L, Dch, N)
    n_chunks = triton.cdiv(L, block_t)
    seg_chunks = triton.cdiv(n_chunks, MAX_SEGMENTS)
    n_seg = triton.cdiv(n_chunks, seg_chunks)
    return dict(BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n, n_chunks=n_chunks, seg_chunks=seg_chunks,
                n_seg=n_seg, n_dtiles=triton.cdiv(Dch, block_d))


def _carry(A, dtsum, val, bsz, Dch, N, plan, reverse: bool) -> torch.Tensor:
    """Pass 2 on the summaries: the value entering every segment (see ``_segment_carry_kernel``)."""
    out = torch.empty_like(val)
    _segment_carry_kernel[(bsz * K.value, plan["n_dtiles"])](
        A, dtsum, val, out, Dch, N, plan["n_seg"], REVERSE=reverse, BLOCK_S=MAX_SEGMENTS,
        BLOCK_D=plan["BLOCK_D"], BLOCK_N=plan["BLOCK_N"], **launch_options())
    return out


def _summaries(u, delta, A, B, C, bias, dy, plan, softplus: bool):
    """Pass 1: (hend, dtsum, gout) per (batch·4, segment); gout only when dy is given (backward)."""
    bsz, H, W, Dch = u.shape
    N = A.shape[2]
    f32 = dict(dtype=torch.float32, device=u.device)
    n_seg = plan["n_seg"]
    hend = torch.empty((bsz * K.value, n_seg, Dch, N), **f32)
    dtsum = torch.empty((bsz * K.value, n_seg, Dch), **f32)
    gout = torch.empty_like(hend) if dy is not None else hend
    grid = (bsz * K.value, plan["n_dtiles"], n_seg)
    _segment_summary_kernel[grid](
        u, delta, A, B, C, A if bias is None else bias, u if dy is None else dy, hend, dtsum, gout,
        H * W, H, W, Dch, N, plan["n_chunks"], plan["seg_chunks"], n_seg,
        HAS_BIAS=bias is not None, SOFTPLUS=softplus, WITH_ADJOINT=dy is not None,
        BLOCK_T=plan["BLOCK_T"], BLOCK_D=plan["BLOCK_D"], BLOCK_N=plan["BLOCK_N"], **launch_options())
    return hend, dtsum, (gout if dy is not None else None)


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
    """y (batch, H, W, D) of the fused SS2D scan; see the calling convention in ``ops.py``.

    Three launches, each parallel over batch × direction × channel tile (× segment): segment summaries from a
    zero state, the carries between segments, and the segments' outputs from their true entering states."""
    bsz, H, W, Dch = u.shape
    L, N = H * W, A.shape[2]
    plan = _plan(L, Dch, N)
    A = A.float().contiguous()
    dskip = A if D is None else D.float().contiguous()
    bias = None if delta_bias is None else delta_bias.float().contiguous()
    ys = torch.empty((bsz, K.value, H, W, Dch), dtype=torch.float32, device=u.device)
    with device_guard(u):
        hend, dtsum, _ = _summaries(u, delta, A, B, C, bias, None, plan, bool(delta_softplus))
        hin = _carry(A, dtsum, hend, bsz, Dch, N, plan, reverse=False)
        _ss2d_fwd_kernel[(bsz * K.value, plan["n_dtiles"], plan["n_seg"])](
            u, delta, A, B, C, dskip, A if bias is None else bias, hin, ys, L, H, W, Dch, N,
            plan["n_chunks"], plan["seg_chunks"], plan["n_seg"],
            HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus),
            BLOCK_T=plan["BLOCK_T"], BLOCK_D=plan["BLOCK_D"], BLOCK_N=plan["BLOCK_N"], **launch_options())
    y = ys.sum(1)
    return y if out_float else y.to(u.dtype)


def backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias) of the fused SS2D scan; see ``ops.py``.

    Pass 1 summarises every segment forwards (state from zero) and backwards (adjoint from a zero carry),
    pass 2 turns both into true entering values, pass 3 forms the gradients per segment."""
    bsz, H, W, Dch = u.shape
    L, N = H * W, A.shape[2]
    plan = _plan(L, Dch, N)
    n_seg, n_dtiles = plan["n_seg"], plan["n_dtiles"]
    dev, f32 = u.device, torch.float32
    dy = dy.contiguous()
    A = A.float().contiguous()
    dskip = A if D is None else D.float().contiguous()
    bias = None if delta_bias is None else delta_bias.float().contiguous()
    bk = bsz * K.value
    ckpt = torch.empty((bk, plan["n_chunks"], Dch, N), dtype=f32, device=dev)
    dus = torch.empty((bsz, K.value, H, W, Dch), dtype=f32, device=dev)
    ddelta = torch.empty_like(delta)
    db_part = torch.empty((n_dtiles,) + tuple(B.shape), dtype=f32, device=dev)
    dc_part = torch.empty((n_dtiles,) + tuple(C.shape), dtype=f32, device=dev)
    da_part = torch.empty((bsz, K.value, n_seg, Dch, N), dtype=f32, device=dev)
    dd_part = torch.empty((bsz, K.value, n_seg, Dch), dtype=f32, device=dev)
    dbias_part = torch.empty((bsz, K.value, n_seg, Dch), dtype=f32, device=dev)
    with device_guard(u):
        hend, dtsum, gout = _summaries(u, delta, A, B, C, bias, dy, plan, bool(delta_softplus))
        hin = _carry(A, dtsum, hend, bsz, Dch, N, plan, reverse=False)
        gin = _carry(A, dtsum, gout, bsz, Dch, N, plan, reverse=True)
        _ss2d_bwd_kernel[(bk, n_dtiles, n_seg)](
            dy, u, delta, A, B, C, dskip, A if bias is None else bias, hin, gin, ckpt, dus, ddelta,
            da_part, db_part, dc_part, dd_part, dbias_part, L, H, W, Dch, N,
            plan["n_chunks"], plan["seg_chunks"], n_seg,
            HAS_D=D is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus),
            BLOCK_T=plan["BLOCK_T"], BLOCK_D=plan["BLOCK_D"], BLOCK_N=plan["BLOCK_N"], **launch_options())
    return (dus.sum(1).to(u.dtype), ddelta, da_part.sum((0, 2)), db_part.sum(0).to(B.dtype),
            dc_part.sum(0).to(C.dtype), dd_part.sum((0, 2)), dbias_part.sum((0, 2)))
