"""FCCM backend on the CUDA kernels of ``dhkd_kernels._cuda`` (csrc/fccm/fccm_cuda.cu).

Implements the backend protocol of ``ops.py``; launches go to the current stream of the input's device.
"""
from __future__ import annotations

import torch

from .._ext import device_guard, dtype_code, ptr, require, stream
from .cpu import pooled_empty


def _lib():
    return require("_cuda", "fccm_pool_relu_fwd", "the FCCM CUDA kernels")


def _forward(symbol, x, bias, out):
    with device_guard(x):
        getattr(_lib(), symbol)(ptr(x), ptr(bias), ptr(out), dtype_code(x), *x.shape, x.stride(), out.stride(),
                                stream(x.device))
    return out


def _backward(symbol, dout, x, bias):
    """dx and the bias gradient, summed from the kernel's per-block fp32 partials (B, C, blocks)."""
    lib = _lib()
    B, C, H, W = x.shape
    dx = torch.empty_like(x)
    part = torch.empty((B, C, lib.fccm_blocks(H, W)), dtype=torch.float32, device=x.device)
    with device_guard(x):
        getattr(lib, symbol)(ptr(dout), ptr(x), ptr(bias), ptr(dx), ptr(part), dtype_code(x), B, C, H, W,
                             dout.stride(), x.stride(), dx.stride(), stream(x.device))
    return dx, part.sum((0, 2))


def pool_relu_forward(z, bias):
    """relu(maxpool2x2(z + bias)) on the CUDA kernel (see :class:`~dhkd_kernels.fccm.ops.FCCMBackend`)."""
    return _forward("fccm_pool_relu_fwd", z, bias, pooled_empty(z))


def pool_relu_backward(dout, z, bias):
    """(dz, dbias) of pool_relu on the CUDA kernel."""
    return _backward("fccm_pool_relu_bwd", dout, z, bias)


def bias_gelu_forward(h, bias):
    """gelu(h + bias) on the CUDA kernel."""
    return _forward("fccm_bias_gelu_fwd", h, bias, torch.empty_like(h))


def bias_gelu_backward(dout, h, bias):
    """(dh, dbias) of bias_gelu on the CUDA kernel."""
    return _backward("fccm_bias_gelu_bwd", dout, h, bias)
