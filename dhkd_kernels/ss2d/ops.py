"""Public SS2D op: validation, backend choice, torch custom op, fake kernel, autograd.

Backends (``dhkd_kernels/ss2d/{cpu,cuda,triton}.py``) implement :class:`SS2DBackend`.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from .. import registry
from .._checks import IO_DTYPES, check_tensor
from . import reference

OP = "ss2d_scan"


class SS2DBackend(Protocol):
    """What an SS2D kernel backend module defines, on contiguous channels-last tensors: u (b, H, W, D), delta
    (b, H, W, 4, D), A (4, D, N) fp32, B/C (b, H, W, 4, N), D/delta_bias (4, D) fp32 or None. du, ddelta, dB, dC
    come back in the inputs' dtypes; dA, dD, ddelta_bias in fp32 (dD and ddelta_bias are computed even when
    D/delta_bias are None; the autograd wrapper drops them then)."""

    def forward(self, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_float: bool) -> torch.Tensor:
        """y (b, H, W, D) in u's dtype, or fp32 if ``out_float``."""

    def backward(self, dy, u, delta, A, B, C, D, delta_bias, delta_softplus: bool) -> tuple[torch.Tensor, ...]:
        """(du, ddelta, dA, dB, dC, dD, ddelta_bias)."""


_op = registry.register_op(OP, __package__, SS2DBackend, symbol="ss2d_fwd")
_impl = _op.implementation


@torch.library.custom_op("dhkd::ss2d_scan", mutates_args=())
def _ss2d_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                  out_float: bool, backend: str) -> torch.Tensor:
    return _impl(backend).forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)


@_ss2d_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float, backend):
    return u.new_empty(u.shape, dtype=torch.float32 if out_float else u.dtype)


@torch.library.custom_op("dhkd::ss2d_scan_backward", mutates_args=())
def _ss2d_scan_backward_op(dy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                           delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _impl(backend).backward(dy.contiguous(), u, delta, A, B, C, D, delta_bias, delta_softplus)
    return tuple(grads)


@_ss2d_scan_backward_op.register_fake
def _(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    K, Dch = A.shape[0], A.shape[1]
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A, **f32), torch.empty_like(B),
            torch.empty_like(C), A.new_empty((K, Dch), **f32), A.new_empty((K, Dch), **f32))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, out_float, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus, ctx.backend = delta_softplus, backend
    ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None


def _backward(ctx, dy):
    u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dbias = _ss2d_scan_backward_op(dy, u, delta, A, B, C, D, delta_bias,
                                                               ctx.delta_softplus, ctx.backend)
    return (du, ddelta, dA, dB, dC, dD if ctx.has_D else None, dbias if ctx.has_bias else None,
            None, None, None)


_ss2d_scan_op.register_autograd(_backward, setup_context=_setup_context)


def check_ss2d_inputs(u, delta, A, B, C, D=None, delta_bias=None) -> None:
    """Raise a clear error naming the argument if any input of :func:`ss2d_scan` is malformed."""
    check_tensor("u", u, (None, None, None, None), IO_DTYPES + (torch.float64,))
    bsz, H, W, Dch = u.shape
    dev = u.device
    check_tensor("A", A, (4, Dch, None), (torch.float32, torch.float64), dev)
    N = A.shape[2]
    check_tensor("delta", delta, (bsz, H, W, 4, Dch), (u.dtype,), dev)
    check_tensor("B", B, (bsz, H, W, 4, N), (u.dtype,), dev)
    check_tensor("C", C, (bsz, H, W, 4, N), (u.dtype,), dev)
    if D is not None:
        check_tensor("D", D, (4, Dch), (torch.float32, torch.float64), dev)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, (4, Dch), (torch.float32, torch.float64), dev)
    if H * W == 0 or bsz == 0 or Dch == 0 or N == 0:
        raise ValueError(f"ss2d_scan got an empty input: u {tuple(u.shape)}, A {tuple(A.shape)}")


def ss2d_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
              delta_softplus: bool = True, out_float: bool = False) -> torch.Tensor:
    """Fused SS2D: cross-scan -> four selective scans -> cross-merge, channels-last.

    Args:
        u: (batch, H, W, D) input sequence values (fp32, fp16 or bf16).
        delta: (batch, H, W, 4, D) per-direction time steps before ``delta_bias`` and softplus.
        A: (4, D, N) fp32 state matrix (negative for a stable scan).
        B, C: (batch, H, W, 4, N) per-direction input/output projections, shared by all channels.
        D: (4, D) fp32 skip weights or None. delta_bias: (4, D) fp32 or None.
        delta_softplus: apply softplus (identity above 20) to delta + delta_bias.
        out_float: return fp32 whatever the input dtype.
    Direction k scans the H×W map row-major (0), column-major (1), and their reverses (2, 3); the four
    outputs are summed back at each pixel. Internal math is fp32 on every backend.
    Returns: y (batch, H, W, D).
    """
    check_ss2d_inputs(u, delta, A, B, C, D, delta_bias)
    backend = _op.backend_for(u, d_state=A.shape[2])
    if backend == "reference":
        return reference.ss2d_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)
    args = [t.contiguous() if t is not None else None for t in (u, delta, A, B, C, D, delta_bias)]
    return _ss2d_scan_op(*args, delta_softplus, out_float, backend)

