"""C++/OpenMP backend of the selective scan (``dhkd_kernels._cpu.selective_scan_fwd`` / ``selective_scan_bwd``).

Calling convention of :mod:`dhkd_kernels.selective_scan.ops`: contiguous CPU tensors; outputs are allocated here
and filled by the kernel through raw pointers. The kernel uses ``torch.get_num_threads()`` OpenMP threads.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext


def _module():
    return _ext.require("_cpu", "selective_scan_fwd", "the C++ selective-scan kernels")


def _sizes(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, tensors: dict) -> tuple:
    """(batch, D, L, N, G, var_B, var_C) after checking every tensor is on the CPU."""
    for name, t in tensors.items():
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"the cpu selective-scan backend needs CPU tensors, but {name} is on {t.device}")
    varB, varC = B.dim() == 4, C.dim() == 4
    G = B.shape[1] if varB else C.shape[1] if varC else 1
    return (*u.shape, A.shape[1], G, varB, varC)


def forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (b, D, L) in u's dtype, last_state (b, D, N) fp32)."""
    mod = _module()
    sizes = _sizes(u, A, B, C, dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    bsz, Dch, _, N = sizes[:4]
    out = torch.empty_like(u)
    last_state = torch.empty((bsz, Dch, N), dtype=torch.float32)
    mod.selective_scan_fwd(_ext.ptr(u), _ext.ptr(delta), _ext.ptr(A), _ext.ptr(B), _ext.ptr(C), _ext.ptr(D),
                           _ext.ptr(z), _ext.ptr(delta_bias), _ext.ptr(out), _ext.ptr(last_state), *sizes,
                           _ext.dtype_code(u), bool(delta_softplus), torch.get_num_threads())
    return out, last_state


def backward(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
             delta_softplus: bool):
    """Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); dz is empty without z, dD/ddelta_bias are
    computed even for None."""
    mod = _module()
    sizes = _sizes(u, A, B, C, dict(dout=dout, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    if dout.shape != u.shape:
        raise ValueError(f"dout must have the shape of u {tuple(u.shape)}, got {tuple(dout.shape)}")
    dout = dout.contiguous()
    Dch = u.shape[1]
    du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
    dz = torch.empty_like(z) if z is not None else u.new_empty(0)
    dA = torch.empty_like(A, dtype=torch.float32)
    dD, dbias = (torch.empty(Dch, dtype=torch.float32) for _ in range(2))
    mod.selective_scan_bwd(_ext.ptr(dout), _ext.dtype_code(dout), _ext.ptr(u), _ext.ptr(delta), _ext.ptr(A),
                           _ext.ptr(B), _ext.ptr(C), _ext.ptr(D), _ext.ptr(z), _ext.ptr(delta_bias), _ext.ptr(du),
                           _ext.ptr(ddelta), _ext.ptr(dA), _ext.ptr(dB), _ext.ptr(dC), _ext.ptr(dD),
                           _ext.ptr(dz if z is not None else None), _ext.ptr(dbias), *sizes, _ext.dtype_code(u),
                           bool(delta_softplus), torch.get_num_threads())
    return du, ddelta, dA, dB, dC, dD, dz, dbias
