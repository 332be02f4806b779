"""FCCM backend on the C++/OpenMP kernels of ``dhkd_kernels._cpu`` (csrc/fccm/fccm_cpu.cpp).

Calling convention shared by the backends (``cpu``, ``cuda``, ``triton``):
    pool_relu_forward(z, bias) -> out            out = relu(maxpool2x2(z + bias)), z's memory format
    pool_relu_backward(dout, z, bias) -> (dz, dbias)
    bias_gelu_forward(h, bias) -> out            out = gelu(h + bias), h's memory format
    bias_gelu_backward(dout, h, bias) -> (dh, dbias)
z, h, dout any strided (B, C, H, W) tensors; bias (C,) fp32 contiguous; dbias comes back fp32.
"""
from __future__ import annotations

import torch

from .._ext import dtype_code, ptr, require
from ..scmm.ops import dense_format


def _lib():
    return require("_cpu", "fccm_pool_relu_fwd", "the C++ FCCM kernels")


def pooled_empty(z):
    B, C, H, W = z.shape
    return torch.empty((B, C, H // 2, W // 2), dtype=z.dtype, device=z.device, memory_format=dense_format(z))


def pool_relu_forward(z, bias):
    out = pooled_empty(z)
    _lib().fccm_pool_relu_fwd(ptr(z), ptr(bias), ptr(out), dtype_code(z), *z.shape, z.stride(), out.stride())
    return out


def pool_relu_backward(dout, z, bias):
    B, C, H, W = z.shape
    dz = torch.empty_like(z)
    db = torch.zeros((B, max(H // 2, 1), C), dtype=torch.float32, device=z.device)  # partial sums
    _lib().fccm_pool_relu_bwd(ptr(dout), ptr(z), ptr(bias), ptr(dz), ptr(db), dtype_code(z), *z.shape,
                              dout.stride(), z.stride(), dz.stride())
    return dz, db.sum((0, 1))


def bias_gelu_forward(h, bias):
    out = torch.empty_like(h)
    _lib().fccm_bias_gelu_fwd(ptr(h), ptr(bias), ptr(out), dtype_code(h), *h.shape, h.stride(), out.stride())
    return out


def bias_gelu_backward(dout, h, bias):
    B, C, H, W = h.shape
    dh = torch.empty_like(h)
    db = torch.zeros((B, H, C), dtype=torch.float32, device=h.device)  # partial sums
    _lib().fccm_bias_gelu_bwd(ptr(dout), ptr(h), ptr(bias), ptr(dh), ptr(db), dtype_code(h), *h.shape,
                              dout.stride(), h.stride(), dh.stride())
    return dh, db.sum((0, 1))
