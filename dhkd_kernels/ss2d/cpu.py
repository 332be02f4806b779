"""C++/OpenMP backend of the fused SS2D scan (``dhkd_kernels._cpu.ss2d_fwd`` / ``ss2d_bwd``).

Calling convention of :mod:`dhkd_kernels.ss2d.ops`: contiguous channels-last CPU tensors; outputs are
allocated here and filled by the kernel through raw pointers. The kernel uses ``torch.get_num_threads()``
OpenMP threads.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext


def _module():
    return _ext.require("_cpu", "ss2d_fwd", "the C++ SS2D kernels")


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def _prepare(u, delta, A, B, C, D, delta_bias):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("delta_bias", delta_bias)):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"the cpu SS2D backend needs CPU tensors, but {name} is on {t.device}")
    u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
    return u, delta, _f32(A), B, C, _f32(D), _f32(delta_bias)


def forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
            out_float: bool) -> torch.Tensor:
    """The fused SS2D forward on the C++ kernel (see :class:`~dhkd_kernels.ss2d.ops.SS2DBackend`)."""
    mod = _module()
    u, delta, A, B, C, D, delta_bias = _prepare(u, delta, A, B, C, D, delta_bias)
    bsz, H, W, Dch = u.shape
    y = torch.empty(u.shape, dtype=torch.float32 if out_float else u.dtype)
    mod.ss2d_fwd(_ext.ptr(u), _ext.ptr(delta), _ext.ptr(A), _ext.ptr(B), _ext.ptr(C), _ext.ptr(D),
                 _ext.ptr(delta_bias), _ext.ptr(y), bsz, H, W, Dch, A.shape[2], _ext.dtype_code(u),
                 _ext.dtype_code(y), bool(delta_softplus), torch.get_num_threads())
    return y


def backward(dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
             delta_softplus: bool):
    """Returns (du, ddelta, dA, dB, dC, dD, ddelta_bias); dD/ddelta_bias are computed even for None."""
    mod = _module()
    u, delta, A, B, C, D, delta_bias = _prepare(u, delta, A, B, C, D, delta_bias)
    if dy.shape != u.shape:
        raise ValueError(f"dy must have the shape of u {tuple(u.shape)}, got {tuple(dy.shape)}")
    dy = dy.contiguous()
    bsz, H, W, Dch = u.shape
    N = A.shape[2]
    du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
    dA = torch.empty((4, Dch, N), dtype=torch.float32)
    dD = torch.empty((4, Dch), dtype=torch.float32)
    dbias = torch.empty((4, Dch), dtype=torch.float32)
    mod.ss2d_bwd(_ext.ptr(dy), _ext.dtype_code(dy), _ext.ptr(u), _ext.ptr(delta), _ext.ptr(A), _ext.ptr(B),
                 _ext.ptr(C), _ext.ptr(D), _ext.ptr(delta_bias), _ext.ptr(du), _ext.ptr(ddelta), _ext.ptr(dA),
                 _ext.ptr(dB), _ext.ptr(dC), _ext.ptr(dD), _ext.ptr(dbias), bsz, H, W, Dch, N,
                 _ext.dtype_code(u), bool(delta_softplus), torch.get_num_threads())
    return du, ddelta, dA, dB, dC, dD, dbias
