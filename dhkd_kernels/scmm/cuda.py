"""SCMM backend on the CUDA kernels of ``dhkd_kernels._cuda`` (csrc/scmm/scmm_cuda.cu).

Implements the backend protocol of ``ops.py``; launches go to the current stream of the input's device.
"""
from __future__ import annotations

import torch

from .._ext import device_guard, dtype_code, ptr, require, stream


def _lib():
    return require("_cuda", "scmm_two_scale_fwd", "the SCMM CUDA kernels")


def two_scale_forward(x, wa, ba, wb, bb):
    """The two-scale depth-wise branch s on the CUDA kernel (see :class:`~dhkd_kernels.scmm.ops.SCMMBackend`)."""
    s = torch.empty_like(x)
    with device_guard(x):
        _lib().scmm_two_scale_fwd(ptr(x), ptr(s), ptr(wa), ptr(ba), ptr(wb), ptr(bb), dtype_code(x), *x.shape,
                                  x.stride(), s.stride(), stream(x.device))
    return s


def two_scale_backward(ds, x, wa, wb):
    """(dx, dwa, dba, dwb, dbb) of the two-scale branch on the CUDA kernel."""
    lib = _lib()
    B, C, H, W = x.shape
    half = C // 2
    f32 = dict(dtype=torch.float32, device=x.device)
    gsum = torch.empty((B * half, (H // 2) * (W // 2)), **f32)
    dpool = torch.empty_like(gsum)
    part_a = torch.empty((B, half, lib.scmm_blocks_full(H, W), 10), **f32)
    part_b = torch.empty((B, half, lib.scmm_blocks_half(H, W), 10), **f32)
    dx = torch.empty_like(x)
    with device_guard(x):
        lib.scmm_two_scale_bwd(ptr(ds), ptr(x), ptr(dx), ptr(wa), ptr(wb), ptr(gsum), ptr(dpool), ptr(part_a),
                               ptr(part_b), dtype_code(x), B, C, H, W, ds.stride(), x.stride(), dx.stride(),
                               stream(x.device))
    pa, pb = part_a.sum((0, 2)), part_b.sum((0, 2))  # (half, 10): 9 weight taps and the bias
    return dx, pa[:, :9].clone(), pa[:, 9].clone(), pb[:, :9].clone(), pb[:, 9].clone()


def gate_forward(G, x):
    """relu(G) * x + x on the CUDA kernel."""
    y = torch.empty_like(x)
    with device_guard(x):
        _lib().scmm_gate_fwd(ptr(G), ptr(x), ptr(y), dtype_code(x), x.numel(), stream(x.device))
    return y


def gate_backward(dy, G, x):
    """(dG, dx) of the gate epilogue on the CUDA kernel."""
    dG, dx = torch.empty_like(x), torch.empty_like(x)
    with device_guard(x):
        _lib().scmm_gate_bwd(ptr(dy), ptr(G), ptr(x), ptr(dG), ptr(dx), dtype_code(x), x.numel(), stream(x.device))
    return dG, dx
