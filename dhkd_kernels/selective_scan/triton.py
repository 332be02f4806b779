"""Triton backend of the selective scan (forward and backward).

One program owns (batch item, B/C group, tile of BLOCK_D channels of that group), so a variable B or C chunk is
one [BLOCK_T, BLOCK_N] tile shared by the program's channels. The sequence is walked in chunks of BLOCK_T
steps: the recurrence h_t = a_t·h_{t-1} + x_t over a chunk is a ``tl.associative_scan`` on
[BLOCK_T, BLOCK_D, BLOCK_N] tiles, started from the state carried over from the previous chunk in registers.
exp is computed as exp2 with log2(e) folded into A once per program.

The backward recomputes: a forward pass stores only the state entering each chunk ((L / BLOCK_T)·D·N fp32 values
per batch item), then a reverse walk over the chunks rebuilds each chunk's states from its checkpoint and scans
the adjoint g_t = dy_t·C_t + a_{t+1}·g_{t+1} backwards. Gradients reduced over channels (variable dB, dC) are
written as per-channel-tile partials, those reduced over the batch (dA, dD, ddelta_bias, input-independent dB/dC)
as per-batch partials; torch sums them afterwards, so the result is deterministic.

All arithmetic is fp32: values are converted right after ``tl.load`` and back only at ``tl.store``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._ext import device_guard
from ..triton_scan import (LOG2E, adjoint_combine, chunk_states, launch_options, sigmoid, step_dt, tile_blocks,
                           tile_row)


@triton.jit
def _program_setup(a_ptr, bias_ptr, dskip_ptr, Dch, L, N, G, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Indices of a program of grid (batch, group, channel tiles) and its channels' parameters: pid_b, pid_g,
    d_ok, offs_d (dead channels past the group's end read its first one), offs_n, n_ok, rows (a chunk's steps),
    m_dn, seq (start of each channel's (b, D, L) row), rows0 (start of the group's variable B/C rows), A and
    A·log2(e) [BLOCK_D, BLOCK_N], bias and D [BLOCK_D] (zero when absent), n_chunks, dn_offs (the channels'
    (b, D, N) offsets) and ckpt_offs (their offsets in the (b, chunks, D, N) checkpoints, chunk 0)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_g = tl.program_id(1)
    Dg = Dch // G
    offs_j = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_j < Dg
    offs_d = pid_g * Dg + tl.where(d_ok, offs_j, 0)
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.arange(0, BLOCK_T)
    m_dn = d_ok[:, None] & n_ok[None, :]
    seq = (pid_b * Dch + offs_d) * L
    rows0 = (pid_b * G + pid_g) * N * L
    a_raw = tl.load(a_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m_dn, other=0.0)
    a2 = a_raw * LOG2E
    bias = tl.load(bias_ptr + offs_d, mask=d_ok, other=0.0) if HAS_BIAS else offs_d * 0.0
    dskip = tl.load(dskip_ptr + offs_d, mask=d_ok, other=0.0) if HAS_D else offs_d * 0.0
    n_chunks = tl.cdiv(L, BLOCK_T)
    dn_offs = (pid_b * Dch + offs_d[:, None]) * N + offs_n[None, :]
    ckpt_offs = pid_b * n_chunks * Dch * N + offs_d[:, None] * N + offs_n[None, :]
    return (pid_b, pid_g, d_ok, offs_d, offs_n, n_ok, rows, m_dn, seq, rows0, a_raw, a2, bias, dskip, n_chunks,
            dn_offs, ckpt_offs)


@triton.jit
def _load_steps(u_ptr, delta_ptr, seq, t, m_td, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """u, the pre-softplus dt (delta + bias) and dt of a chunk, [BLOCK_T, BLOCK_D] fp32 (dt zero on padding)."""
    offs = seq[None, :] + t[:, None]
    u = tl.load(u_ptr + offs, mask=m_td, other=0.0).to(tl.float32)
    zr, dt = step_dt(tl.load(delta_ptr + offs, mask=m_td, other=0.0).to(tl.float32), bias, m_td, HAS_BIAS, SOFTPLUS)
    return u, zr, dt


@triton.jit
def _load_proj(ptr, rows0, offs_d, offs_n, t, m_tn, m_dn, N, L, VAR: tl.constexpr):
    """B or C for a chunk: variable -> [BLOCK_T, 1, BLOCK_N] of the group's rows; else [1, BLOCK_D, BLOCK_N]."""
    if VAR:
        v = tl.load(ptr + rows0 + offs_n[None, :] * L + t[:, None], mask=m_tn, other=0.0).to(tl.float32)
        return v[:, None, :]
    else:
        v = tl.load(ptr + offs_d[:, None] * N + offs_n[None, :], mask=m_dn, other=0.0)
        return v[None, :, :]


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
                Dch, L, N, G,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                B_VAR: tl.constexpr, C_VAR: tl.constexpr, STATES_ONLY: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Forward; STATES_ONLY: store the state entering each chunk in ckpt (batch, chunks, D, N) instead."""
    (pid_b, pid_g, d_ok, offs_d, offs_n, n_ok, rows, m_dn, seq, rows0, a_raw, a2, bias, dskip, n_chunks, dn_offs,
     ckpt_offs) = _program_setup(a_ptr, bias_ptr, dskip_ptr, Dch, L, N, G, HAS_BIAS, HAS_D,
                                 BLOCK_T, BLOCK_D, BLOCK_N)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(n_chunks):
        if STATES_ONLY:
            tl.store(ckpt_ptr + ckpt_offs + c * Dch * N, h, mask=m_dn)
        t = c * BLOCK_T + rows
        row_ok = t < L
        m_td = row_ok[:, None] & d_ok[None, :]
        m_tn = row_ok[:, None] & n_ok[None, :]
        u, _, dt = _load_steps(u_ptr, delta_ptr, seq, t, m_td, bias, HAS_BIAS, SOFTPLUS)
        bm = _load_proj(b_ptr, rows0, offs_d, offs_n, t, m_tn, m_dn, N, L, B_VAR)
        _, _, hs = chunk_states(h, dt, u, bm, a2, False)
        h = tile_row(hs, rows, BLOCK_T - 1)  # padded rows only repeat the last real state
        if not STATES_ONLY:
            cm = _load_proj(c_ptr, rows0, offs_d, offs_n, t, m_tn, m_dn, N, L, C_VAR)
            y = tl.sum(hs * cm, axis=2)
            if HAS_D:
                y += u * dskip[None, :]
            if HAS_Z:
                zg = tl.load(z_ptr + seq[None, :] + t[:, None], mask=m_td, other=0.0).to(tl.float32)
                y = y * zg * sigmoid(zg)
            tl.store(out_ptr + seq[None, :] + t[:, None], y.to(out_ptr.dtype.element_ty), mask=m_td)
    if not STATES_ONLY:
        tl.store(last_ptr + dn_offs, h, mask=m_dn)


@triton.jit
def _bwd_kernel(dout_ptr, u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, ckpt_ptr,
                du_ptr, ddelta_ptr, dz_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr, dbias_ptr,
                Dch, L, N, G,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                B_VAR: tl.constexpr, C_VAR: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward: reverse walk over the chunks from the checkpoints of the STATES_ONLY forward."""
    (pid_b, pid_g, d_ok, offs_d, offs_n, n_ok, rows, m_dn, seq, rows0, a_raw, a2, bias, dskip, n_chunks, dn_offs,
     ckpt_offs) = _program_setup(a_ptr, bias_ptr, dskip_ptr, Dch, L, N, G, HAS_BIAS, HAS_D,
                                 BLOCK_T, BLOCK_D, BLOCK_N)
    pid_d = tl.program_id(2)
    n_batch = tl.num_programs(0)
    # dA, dD, ddelta_bias and input-independent dB/dC: per-batch (batch, D, N) partials at dn_offs;
    # variable dB/dC: per-channel-tile partials (tiles, batch, G, N, L)
    part0 = (pid_d * n_batch * G + pid_b * G + pid_g) * N * L
    g_in = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # a_{t+1}·g_{t+1} flowing into the chunk's last step
    d_a = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    d_b = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    d_c = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    d_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        t = c * BLOCK_T + rows
        row_ok = t < L
        m_td = row_ok[:, None] & d_ok[None, :]
        m_tn = row_ok[:, None] & n_ok[None, :]
        offs_td = seq[None, :] + t[:, None]
        u, zr, dt = _load_steps(u_ptr, delta_ptr, seq, t, m_td, bias, HAS_BIAS, SOFTPLUS)
        bm = _load_proj(b_ptr, rows0, offs_d, offs_n, t, m_tn, m_dn, N, L, B_VAR)
        cm = _load_proj(c_ptr, rows0, offs_d, offs_n, t, m_tn, m_dn, N, L, C_VAR)
        h0 = tl.load(ckpt_ptr + ckpt_offs + c * Dch * N, mask=m_dn, other=0.0)
        a, x, hs = chunk_states(h0, dt, u, bm, a2, False)
        dout = tl.load(dout_ptr + offs_td, mask=m_td, other=0.0).to(tl.float32)
        if HAS_Z:
            zg = tl.load(z_ptr + offs_td, mask=m_td, other=0.0).to(tl.float32)
            sg = sigmoid(zg)
            dy = dout * zg * sg
            y = tl.sum(hs * cm, axis=2) + u * dskip[None, :]
            tl.store(dz_ptr + offs_td, (dout * y * sg * (1.0 + zg * (1.0 - sg))).to(dz_ptr.dtype.element_ty),
                     mask=m_td)
        else:
            dy = dout
        xg = dy[:, :, None] * cm + tl.where((rows == BLOCK_T - 1)[:, None, None], g_in[None], 0.0)
        _, _, g = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), xg), 0, adjoint_combine,
                                      reverse=True)
        g_in = tile_row(a * g, rows, 0)
        g = tl.where(m_td[:, :, None], g, 0.0)
        decay = g * (hs - x)  # g_t·a_t·h_{t-1}, with a_t·h_{t-1} = h_t - x_t
        gdtu = g * (dt * u)[:, :, None]
        dyh = dy[:, :, None] * hs
        if B_VAR:
            tl.store(db_ptr + part0 + offs_n[None, :] * L + t[:, None], tl.sum(gdtu, axis=1), mask=m_tn)
        else:
            d_b += tl.sum(gdtu, axis=0)
        if C_VAR:
            tl.store(dc_ptr + part0 + offs_n[None, :] * L + t[:, None], tl.sum(dyh, axis=1), mask=m_tn)
        else:
            d_c += tl.sum(dyh, axis=0)
        d_a += tl.sum(decay * dt[:, :, None], axis=0)
        gb = tl.sum(g * bm, axis=2)
        ddt = gb * u + tl.sum(decay * a_raw[None, :, :], axis=2)
        du = gb * dt
        if HAS_D:
            du += dy * dskip[None, :]
        d_skip += tl.sum(tl.where(m_td, dy * u, 0.0), axis=0)
        if SOFTPLUS:
            ddt = tl.where(zr > 20.0, ddt, ddt * sigmoid(zr))
        ddt = tl.where(m_td, ddt, 0.0)
        d_bias += tl.sum(ddt, axis=0)
        tl.store(ddelta_ptr + offs_td, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_td)
        tl.store(du_ptr + offs_td, du.to(du_ptr.dtype.element_ty), mask=m_td)
    tl.store(da_ptr + dn_offs, d_a, mask=m_dn)
    if not B_VAR:
        tl.store(db_ptr + dn_offs, d_b, mask=m_dn)
    if not C_VAR:
        tl.store(dc_ptr + dn_offs, d_c, mask=m_dn)
    tl.store(dd_ptr + pid_b * Dch + offs_d, d_skip, mask=d_ok)
    tl.store(dbias_ptr + pid_b * Dch + offs_d, d_bias, mask=d_ok)


def _geometry(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> dict:
    """Sizes, groups and tile sizes (BLOCK_T, BLOCK_D, BLOCK_N keep a [T, D, N] tile within budget)."""
    bsz, Dch, L = u.shape
    N = A.shape[1]
    B_var, C_var = B.dim() == 4, C.dim() == 4
    G = B.shape[1] if B_var else (C.shape[1] if C_var else 1)
    block_t, block_d, block_n = tile_blocks(L, Dch // G, N)
    return dict(bsz=bsz, Dch=Dch, L=L, N=N, G=G, B_var=B_var, C_var=C_var, block_t=block_t, block_d=block_d,
                block_n=block_n, n_dtiles=triton.cdiv(Dch // G, block_d), n_chunks=triton.cdiv(L, block_t))


def _launch(kernel, geo: dict, *args, **flags) -> None:
    grid = (geo["bsz"], geo["G"], geo["n_dtiles"])
    kernel[grid](*args, geo["Dch"], geo["L"], geo["N"], geo["G"], **flags, BLOCK_T=geo["block_t"],
                 BLOCK_D=geo["block_d"], BLOCK_N=geo["block_n"], **launch_options())


def _flags(geo: dict, D, z, delta_bias, delta_softplus) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), B_VAR=geo["B_var"], C_VAR=geo["C_var"])


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """(out, last_state) of the selective scan; see the calling convention in ``ops.py``."""
    geo = _geometry(u, A, B, C)
    out = torch.empty_like(u)
    last_state = torch.empty((geo["bsz"], geo["Dch"], geo["N"]), dtype=torch.float32, device=u.device)
    dskip = A if D is None else D
    bias = A if delta_bias is None else delta_bias
    with device_guard(u):
        _launch(_fwd_kernel, geo, u, delta, A, B, C, dskip, u if z is None else z, bias, out, last_state, A,
                **_flags(geo, D, z, delta_bias, delta_softplus), STATES_ONLY=False)
    return out, last_state


def backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of the selective scan; see ``ops.py``."""
    geo = _geometry(u, A, B, C)
    bsz, Dch, L, N = geo["bsz"], geo["Dch"], geo["L"], geo["N"]
    dev, f32 = u.device, torch.float32
    dout = dout.contiguous()
    dskip = A if D is None else D
    bias = A if delta_bias is None else delta_bias
    zz = u if z is None else z
    flags = _flags(geo, D, z, delta_bias, delta_softplus)
    ckpt = torch.empty((bsz, geo["n_chunks"], Dch, N), dtype=f32, device=dev)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else u.new_empty(0)
    var_part = lambda: torch.empty((geo["n_dtiles"], bsz, geo["G"], N, L), dtype=f32, device=dev)  # noqa: E731
    batch_part = lambda: torch.empty((bsz, Dch, N), dtype=f32, device=dev)  # noqa: E731
    db_part = var_part() if geo["B_var"] else batch_part()
    dc_part = var_part() if geo["C_var"] else batch_part()
    da_part = batch_part()
    dd_part = torch.empty((bsz, Dch), dtype=f32, device=dev)
    dbias_part = torch.empty((bsz, Dch), dtype=f32, device=dev)
    with device_guard(u):
        _launch(_fwd_kernel, geo, u, delta, A, B, C, dskip, zz, bias, u, A, ckpt, **flags, STATES_ONLY=True)
        _launch(_bwd_kernel, geo, dout, u, delta, A, B, C, dskip, zz, bias, ckpt, du, ddelta,
                dz if z is not None else du, da_part, db_part, dc_part, dd_part, dbias_part, **flags)
    return (du, ddelta, da_part.sum(0), db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype), dd_part.sum(0),
            dz, dbias_part.sum(0))
