"""SCMM backend on the C++/OpenMP kernels of ``dhkd_kernels._cpu`` (csrc/scmm/scmm_cpu.cpp).

Implements :class:`dhkd_kernels.scmm.ops.SCMMBackend`.
"""
from __future__ import annotations

import torch

from .._ext import dtype_code, ptr, require


def _lib():
    return require("_cpu", "scmm_two_scale_fwd", "the C++ SCMM kernels")


def two_scale_forward(x, wa, ba, wb, bb):
    """The two-scale depth-wise branch s on the C++ kernel (see :class:`~dhkd_kernels.scmm.ops.SCMMBackend`)."""
    s = torch.empty_like(x)
    _lib().scmm_two_scale_fwd(ptr(x), ptr(s), ptr(wa), ptr(ba), ptr(wb), ptr(bb), dtype_code(x), *x.shape,
                              x.stride(), s.stride())
    return s


def two_scale_backward(ds, x, wa, wb):
    """(dx, dwa, dba, dwb, dbb) of the two-scale branch on the C++ kernel."""
    B, C = x.shape[:2]
    dx = torch.empty_like(x)
    dw = torch.empty((B, C, 9), dtype=torch.float32, device=x.device)
    db = torch.empty((B, C), dtype=torch.float32, device=x.device)
    _lib().scmm_two_scale_bwd(ptr(ds), ptr(x), ptr(dx), ptr(wa), ptr(wb), ptr(dw), ptr(db), dtype_code(x),
                              *x.shape, ds.stride(), x.stride(), dx.stride())
    half = C // 2  # separate sums: the returned gradients must not alias each other
    return dx, dw[:, :half].sum(0), db[:, :half].sum(0), dw[:, half:].sum(0), db[:, half:].sum(0)


def gate_forward(G, x):
    """relu(G) * x + x on the C++ kernel."""
    y = torch.empty_like(x)
    _lib().scmm_gate_fwd(ptr(G), ptr(x), ptr(y), dtype_code(x), x.numel())
    return y


def gate_backward(dy, G, x):
    """(dG, dx) of the gate epilogue on the C++ kernel."""
    dG, dx = torch.empty_like(x), torch.empty_like(x)
    _lib().scmm_gate_bwd(ptr(dy), ptr(G), ptr(x), ptr(dG), ptr(dx), dtype_code(x), x.numel())
    return dG, dx
