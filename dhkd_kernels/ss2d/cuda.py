"""CUDA backend of the fused SS2D scan: allocation and launch of ``dhkd_kernels._cuda.ss2d_fwd/ss2d_bwd``.

Calling convention as in :mod:`dhkd_kernels.ss2d.ops` (contiguous channels-last tensors on one CUDA device).
Kernels run on the device's current stream. The forward always takes a global workspace (look-back state of
its segment chains and, for fp16/bf16 outputs, the fp32 accumulator of the four directions); its size comes
from ``ss2d_workspace_floats``. The four directions are added into y with fp32 atomics, so the last bits of
y may differ between runs. dB and dC are accumulated with atomics in fp32 buffers and converted to the I/O
dtype here; dA, dD and ddelta_bias come back in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext


def _module():
    return _ext.require("_cuda", "ss2d_fwd", "the SS2D CUDA kernels")


def unsupported(*, d_state: int) -> Optional[str]:
    """Why the SS2D CUDA kernels cannot run this ``d_state``, or None: the states live in registers, up to the
    compiled ``SS2D_MAX_STATE``. The registry asks before choosing this backend, so an automatic choice moves
    on to the next backend."""
    limit = _module().SS2D_MAX_STATE
    return None if d_state <= limit else f"the SS2D CUDA kernels support d_state up to {limit}, got {d_state}"


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def _sizes(u: torch.Tensor, A: torch.Tensor, *io: torch.Tensor) -> tuple[int, int, int, int, int]:
    if u.device.type != "cuda":
        raise ValueError(f"the SS2D CUDA backend needs CUDA tensors, got {u.device}")
    for name, t in zip(("u", "delta", "B", "C"), (u, *io)):
        if not t.is_contiguous():
            raise ValueError(f"the SS2D CUDA backend needs a contiguous {name}")
    bsz, H, W, Dch = u.shape
    N = A.shape[2]
    reason = unsupported(d_state=N)
    if reason is not None:  # reached by direct calls to this backend; the registry never chooses it then
        raise ValueError(f"{reason}; use the 'triton' or 'reference' backend")
    return bsz, H, W, Dch, N


def _workspace(mod, backward: bool, sizes, device: torch.device) -> tuple[Optional[torch.Tensor], int]:
    n = mod.ss2d_workspace_floats(backward, *sizes)
    return (torch.empty(n, dtype=torch.float32, device=device) if n else None), n


def forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
            out_float: bool) -> torch.Tensor:
    """The fused SS2D forward on the CUDA kernel (see :class:`~dhkd_kernels.ss2d.ops.SS2DBackend`)."""
    mod = _module()
    sizes = _sizes(u, A, delta, B, C)
    A, D, delta_bias = _f32(A), _f32(D), _f32(delta_bias)
    y = torch.empty(u.shape, dtype=torch.float32 if out_float else u.dtype, device=u.device)
    with torch.cuda.device(u.device):
        ws, ws_n = _workspace(mod, False, sizes, u.device)
        mod.ss2d_fwd(_ext.ptr(u), _ext.ptr(delta), _ext.ptr(A), _ext.ptr(B), _ext.ptr(C), _ext.ptr(D),
                     _ext.ptr(delta_bias), _ext.ptr(y), _ext.ptr(ws), ws_n, *sizes, _ext.dtype_code(u),
                     bool(out_float), bool(delta_softplus), _ext.stream(u.device))
    return y


def backward(dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
             delta_softplus: bool):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias) of the fused SS2D scan on the CUDA kernel."""
    mod = _module()
    sizes = _sizes(u, A, delta, B, C)
    bsz, H, W, Dch, N = sizes
    if dy.shape != u.shape:
        raise ValueError(f"dy must have the shape of u {tuple(u.shape)}, got {tuple(dy.shape)}")
    if dy.dtype not in (torch.float32, u.dtype):
        dy = dy.to(torch.float32)
    dy = dy.contiguous()
    A, D, delta_bias = _f32(A), _f32(D), _f32(delta_bias)
    f32 = dict(dtype=torch.float32, device=u.device)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA = torch.zeros(A.shape, **f32)
    dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
    dD, dbias = torch.zeros((4, Dch), **f32), torch.zeros((4, Dch), **f32)
    with torch.cuda.device(u.device):
        ws, ws_n = _workspace(mod, True, sizes, u.device)
        mod.ss2d_bwd(_ext.ptr(dy), dy.dtype == torch.float32, _ext.ptr(u), _ext.ptr(delta), _ext.ptr(A),
                     _ext.ptr(B), _ext.ptr(C), _ext.ptr(D), _ext.ptr(delta_bias), _ext.ptr(du), _ext.ptr(ddelta),
                     _ext.ptr(dA), _ext.ptr(dB), _ext.ptr(dC), _ext.ptr(dD), _ext.ptr(dbias), _ext.ptr(ws), ws_n,
                     *sizes, _ext.dtype_code(u), bool(delta_softplus), _ext.stream(u.device))
    return du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dbias
