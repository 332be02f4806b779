"""Triton pieces shared by the selective-scan and SS2D scan kernels: the scan combine functions, the softplus
of dt, the tile budget. Imported by the Triton backends and by Triton code built on them, such as the
separate-operations baseline of the SS2D benchmark (it imports triton, so import it only where triton is installed).

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
