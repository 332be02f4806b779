"""Selective-scan backend on the CUDA kernels of ``dhkd_kernels._cuda`` (csrc/selective_scan/selective_scan_cuda.cu).

Calling convention as in :mod:`dhkd_kernels.selective_scan.ops` (contiguous, validated tensors on one CUDA
device). Launches go to the current stream of the input's device. The backward recomputes the forward: a first
kernel stores only the state entering each chunk of ``SELECTIVE_SCAN_CHUNK`` steps (batch·D·L/chunk·N floats),
the second walks the chunks backwards. dB/dC, dA, dD and ddelta_bias are accumulated with atomics in fp32
buffers; dB/dC are converted to the dtype of B/C here.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._ext import device_guard, dtype_code, ptr, require, stream


def _lib():
    return require("_cuda", "selective_scan_fwd", "the selective-scan CUDA kernels")


def unsupported(*, d_state: int) -> Optional[str]:
    """Why the selective-scan CUDA kernels cannot run this ``d_state``, or None: a lane holds the carries of a
    fixed number of states, up to the compiled ``SELECTIVE_SCAN_MAX_STATE``. The registry asks before choosing
    this backend, so an automatic choice moves on to the next backend."""
    limit = _lib().SELECTIVE_SCAN_MAX_STATE
    if d_state <= limit:
        return None
    return f"the selective-scan CUDA kernels support d_state up to {limit}, got {d_state}"


def _sizes(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> tuple:
    """(batch, D, L, N, groups, B variable, C variable), after checking what only this backend needs."""
    if u.device.type != "cuda":
        raise ValueError(f"the selective-scan CUDA backend needs CUDA tensors, got {u.device}")
    bsz, Dch, L = u.shape
    N = A.shape[1]
    reason = unsupported(d_state=N)
    if reason is not None:  # reached by direct calls to this backend; the registry never chooses it then
        raise ValueError(f"{reason}; use the 'triton' or 'reference' backend")
    B_var, C_var = B.dim() == 4, C.dim() == 4
    groups = B.shape[1] if B_var else (C.shape[1] if C_var else 1)
    return bsz, Dch, L, N, groups, B_var, C_var


def forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, last_state) of the selective scan; see ``ops.py``."""
    lib = _lib()
    sizes = _sizes(u, A, B, C)
    bsz, Dch, _, N = sizes[:4]
    out = torch.empty_like(u)
    last_state = torch.empty((bsz, Dch, N), dtype=torch.float32, device=u.device)
    with device_guard(u):
        lib.selective_scan_fwd(ptr(u), ptr(delta), ptr(A), ptr(B), ptr(C), ptr(D), ptr(z), ptr(delta_bias),
                               ptr(out), ptr(last_state), *sizes, dtype_code(u), bool(delta_softplus),
                               stream(u.device))
    return out, last_state


def backward(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
             delta_bias: Optional[torch.Tensor], delta_softplus: bool):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of the selective scan; see ``ops.py``."""
    lib = _lib()
    sizes = _sizes(u, A, B, C)
    bsz, Dch, L, N = sizes[:4]
    if dout.shape != u.shape:
        raise ValueError(f"dout must have the shape of u {tuple(u.shape)}, got {tuple(dout.shape)}")
    dout = dout.to(u.dtype).contiguous()
    f32 = dict(dtype=torch.float32, device=u.device)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else u.new_empty(0)
    dz_out = dz if z is not None else None  # the kernel writes dz only with a gate
    dA = torch.zeros(A.shape, **f32)
    dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
    dD, dbias = torch.zeros(Dch, **f32), torch.zeros(Dch, **f32)
    nchunks = -(-L // lib.SELECTIVE_SCAN_CHUNK)
    chunk_states = torch.empty((bsz, Dch, nchunks, N), **f32)
    with device_guard(u):
        lib.selective_scan_bwd(ptr(dout), ptr(u), ptr(delta), ptr(A), ptr(B), ptr(C), ptr(D), ptr(z),
                               ptr(delta_bias), ptr(du), ptr(ddelta), ptr(dz_out), ptr(dA), ptr(dB), ptr(dC),
                               ptr(dD), ptr(dbias), ptr(chunk_states), chunk_states.numel(), *sizes,
                               dtype_code(u), bool(delta_softplus), stream(u.device))
    return du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias
