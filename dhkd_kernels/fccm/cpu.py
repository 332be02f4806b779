"""FCCM backend on the C++/OpenMP kernels of ``dhkd_kernels._cpu`` (csrc/fccm/fccm_cpu.cpp).

Implements :class:`dhkd_kernels.fccm.ops.FCCMBackend`.
"""
from __future__ import annotations

import torch

from .._ext import dtype_code, ptr, require
from ..scmm.ops import dense_format


def _lib():
    return require("_cpu", "fccm_pool_relu_fwd", "the C++ FCCM kernels")


def pooled_empty(z):
    """An uninitialised (B, C, H/2, W/2) output in z's dtype, device and memory format."""
    B, C, H, W = z.shape
    return torch.empty((B, C, H // 2, W // 2), dtype=z.dtype, device=z.device, memory_format=dense_format(z))


def _forward(symbol, x, bias, out):
    getattr(_lib(), symbol)(ptr(x), ptr(bias), ptr(out), dtype_code(x), *x.shape, x.stride(), out.stride())
    return out


def _backward(symbol, dout, x, bias, part_rows):
    """dx and the bias gradient, summed from the kernel's fp32 partials (B, part_rows, C), zero on entry."""
    B, C = x.shape[:2]
    dx = torch.empty_like(x)
    db = torch.zeros((B, part_rows, C), dtype=torch.float32, device=x.device)
    getattr(_lib(), symbol)(ptr(dout), ptr(x), ptr(bias), ptr(dx), ptr(db), dtype_code(x), *x.shape, dout.stride(),
                            x.stride(), dx.stride())
    return dx, db.sum((0, 1))


def pool_relu_forward(z, bias):
    """relu(maxpool2x2(z + bias)) on the C++ kernel (see :class:`~dhkd_kernels.fccm.ops.FCCMBackend`)."""
    return _forward("fccm_pool_relu_fwd", z, bias, pooled_empty(z))


def pool_relu_backward(dout, z, bias):
    """(dz, dbias) of pool_relu on the C++ kernel."""
    return _backward("fccm_pool_relu_bwd", dout, z, bias, max(z.shape[2] // 2, 1))


def bias_gelu_forward(h, bias):
    """gelu(h + bias) on the C++ kernel."""
    return _forward("fccm_bias_gelu_fwd", h, bias, torch.empty_like(h))


def bias_gelu_backward(dout, h, bias):
    """(dh, dbias) of bias_gelu on the C++ kernel."""
    return _backward("fccm_bias_gelu_bwd", dout, h, bias, h.shape[2])
