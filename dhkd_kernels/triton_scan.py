"""Triton pieces shared by the selective-scan and SS2D scan kernels: the scan combine functions, dt from delta
(softplus), the states of a chunk, the tile budget and sizes, the launch options. Imported by the Triton backends
and by Triton code built on them, such as the separate-operations baseline of the SS2D benchmark (it imports
triton, so import it only where triton is installed).

All arithmetic is fp32.
"""
from __future__ import annotations

import math
import os

import triton
import triton.language as tl

LOG2E = tl.constexpr(math.log2(math.e))
"""log2(e): exp(x) is computed as exp2(x·LOG2E)."""
ELEMS_PER_TILE = 2048  # BLOCK_T * BLOCK_D * BLOCK_N budget: ~16 fp32 registers per thread per live tile at 4 warps
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""True when the kernels run in the Triton interpreter (no num_warps launch option there)."""


@triton.jit
def linear_combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2) for h -> a·h + x: the composition is (a1·a2, a2·x1 + x2)."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def adjoint_combine(fa_r, p_r, g_r, fa_l, p_l, g_l):
    """The adjoint g_t = x_t + a_{t+1}·g_{t+1}, scanned from the end (reverse=True).

    A segment [i..j] is (a_i, a_{i+1}···a_j, g_i with nothing beyond j); step t alone is (a_t, 1, x_t). The
    first three arguments are the later segment, the last three the earlier one.
    """
    link = p_l * fa_r
    return fa_l, link * p_r, g_l + link * g_r


@triton.jit
def dt_softplus(v):
    """softplus(v) = log1p(exp(v)) for v ≤ 20 (log1p exact via the w = 1 + e trick), v above."""
    e = tl.exp2(tl.minimum(v, 20.0) * LOG2E)
    w = 1.0 + e
    exact = w == 1.0  # e below fp32 resolution: log1p(e) = e
    sp = tl.where(exact, e, tl.log(w) * (e / tl.where(exact, 1.0, w - 1.0)))
    return tl.where(v > 20.0, v, sp)


@triton.jit
def sigmoid(v):
    """1 / (1 + exp(-v)), with v clamped to [-80, 80] so that exp2 never overflows."""
    return 1.0 / (1.0 + tl.exp2(-tl.minimum(tl.maximum(v, -80.0), 80.0) * LOG2E))


@triton.jit
def step_dt(zr, bias, m_td, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(zr + bias, dt) of a [BLOCK_T, BLOCK_D] tile of delta values zr: dt is softplus(zr + bias) (SOFTPLUS) or
    zr + bias, and zero outside the mask m_td."""
    if HAS_BIAS:
        zr = zr + bias[None, :]
    if SOFTPLUS:
        dt = dt_softplus(zr)
    else:
        dt = zr
    dt = tl.where(m_td, dt, 0.0)  # padded steps/channels: a = 1, x = 0, the state passes through unchanged
    return zr, dt


@triton.jit
def chunk_states(h0, dt, u, bm, a2, B_ROWS: tl.constexpr):
    """States of one chunk from the state h0 [BLOCK_D, BLOCK_N] entering it: returns (a, x, h), each
    [BLOCK_T, BLOCK_D, BLOCK_N], with a = exp(dt·A), x = dt·u·B and h_t = a_t·h_{t-1} + x_t. dt, u are
    [BLOCK_T, BLOCK_D], a2 = A·log2(e) is [BLOCK_D, BLOCK_N]; B (bm) is [BLOCK_T, BLOCK_N] (B_ROWS: one row per
    step for all channels) or else broadcasts to [BLOCK_T, BLOCK_D, BLOCK_N]."""
    a = tl.exp2(dt[:, :, None] * a2[None, :, :])
    x = (dt * u)[:, :, None] * (bm[:, None, :] if B_ROWS else bm)
    a_cum, x_cum = tl.associative_scan((a, x), 0, linear_combine)
    return a, x, a_cum * h0[None, :, :] + x_cum


@triton.jit
def tile_row(x, rows, r):
    """Row r of a [BLOCK_T, ...] tile, rows = arange(BLOCK_T) (a masked sum: register tiles cannot be indexed)."""
    return tl.sum(tl.where((rows == r)[:, None, None], x, 0.0), axis=0)


def tile_blocks(L: int, D: int, N: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, BLOCK_N) for a scan of L steps over D channels (of one program's group) and N states:
    at most 16 steps, all states, and as many channels as keep a [T, D, N] tile within ELEMS_PER_TILE."""
    block_n = triton.next_power_of_2(N)
    block_t = min(16, triton.next_power_of_2(L))
    while block_t > 1 and block_t * block_n > ELEMS_PER_TILE:
        block_t //= 2
    block_d = max(1, min(triton.next_power_of_2(D), ELEMS_PER_TILE // (block_t * block_n)))
    return block_t, block_d, block_n


def launch_options() -> dict:
    """Keyword options of a kernel launch: 4 warps when compiled, none under the interpreter."""
    return {} if INTERPRET else {"num_warps": 4}
