"""FCCM backend on the CUDA kernels of ``dhkd_kernels._cuda`` (csrc/fccm/fccm_cuda.cu).

Same calling convention as ``cpu.py``; launches go to the current stream of the input's device.
"""
from __future__ import annotations

import torch

from .._ext import device_guard, dtype_code, ptr, require, stream
from .cpu import pooled_empty


def _lib():
    return require("_cuda", "fccm_pool_relu_fwd", "the FCCM CUDA kernels")


def pool_relu_forward(z, bias):
    out = pooled_empty(z)
    with device_guard(z):
        _lib().fccm_pool_relu_fwd(ptr(z), ptr(bias), ptr(out), dtype_code(z), *z.shape, z.stride(), out.stride(),
                                  stream(z.device))
    return out


def pool_relu_backward(dout, z, bias):
    lib = _lib()
    B, C, H, W = z.shape
    dz = torch.empty_like(z)
    part = torch.empty((B, C, lib.fccm_blocks(H, W)), dtype=torch.float32, device=z.device)
    with device_guard(z):
        lib.fccm_pool_relu_bwd(ptr(dout), ptr(z), ptr(bias), ptr(dz), ptr(part), dtype_code(z), B, C, H, W,
                               dout.stride(), z.stride(), dz.stride(), stream(z.device))
    return dz, part.sum((0, 2))


def bias_gelu_forward(h, bias):
    out = torch.empty_like(h)
    with device_guard(h):
        _lib().fccm_bias_gelu_fwd(ptr(h), ptr(bias), ptr(out), dtype_code(h), *h.shape, h.stride(), out.stride(),
                                  stream(h.device))
    return out


def bias_gelu_backward(dout, h, bias):
    lib = _lib()
    B, C, H, W = h.shape
    dh = torch.empty_like(h)
    part = torch.empty((B, C, lib.fccm_blocks(H, W)), dtype=torch.float32, device=h.device)
    with device_guard(h):
        lib.fccm_bias_gelu_bwd(ptr(dout), ptr(h), ptr(bias), ptr(dh), ptr(part), dtype_code(h), B, C, H, W,
                               dout.stride(), h.stride(), dh.stride(), stream(h.device))
    return dh, part.sum((0, 2))
