"""Public selective-scan op (Mamba S6): validation, backend choice, torch custom op, fake kernels, autograd.

Backends (``dhkd_kernels/selective_scan/{cpu,cuda,triton}.py``) implement :class:`SelectiveScanBackend`.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from .. import registry
from .._checks import IO_DTYPES, check_tensor
from . import reference

OP = "selective_scan"
PARAM_DTYPES = (torch.float32, torch.float64)


class SelectiveScanBackend(Protocol):
    """What a selective-scan kernel backend module defines, on contiguous tensors validated and normalised by
    :func:`selective_scan`.

    u, delta, z: (b, D, L) in the io dtype (fp32, fp16 or bf16; z may be None); A: (D, N) fp32; B, C each either
    variable (b, G, N, L) in the io dtype (G divides D) or input-independent (D, N) fp32; D, delta_bias: (D,) fp32
    or None. out has the io dtype, last_state (b, D, N) is fp32 and carries no gradient. The backward recomputes
    the forward (nothing of size L·D·N is stored); du, ddelta, dz come back in the io dtype (dz empty when z is
    None), dB/dC in the dtype and shape of B/C, dA, dD, ddelta_bias in fp32 (dD and ddelta_bias are computed even
    when D/delta_bias are None; the autograd wrapper drops them then).
    """

    def forward(self, u, delta, A, B, C, D, z, delta_bias,
                delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, last_state)."""

    def backward(self, dout, u, delta, A, B, C, D, z, delta_bias,
                 delta_softplus: bool) -> tuple[torch.Tensor, ...]:
        """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)."""


_op = registry.register_op(OP, __package__, SelectiveScanBackend, symbol="selective_scan_fwd")
_impl = _op.implementation


@torch.library.custom_op("dhkd::selective_scan", mutates_args=())
def _selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                       delta_softplus: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    out, last_state = _impl(backend).forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out, last_state


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    return torch.empty_like(u), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("dhkd::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                                B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                                z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                                delta_softplus: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, torch.Tensor]:
    grads = _impl(backend).backward(dout.contiguous(), u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return tuple(grads)


@_selective_scan_backward_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    Dch = u.shape[1]
    f32 = dict(dtype=torch.float32)
    dz = torch.empty_like(z) if z is not None else u.new_empty(0)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A, **f32), torch.empty_like(B),
            torch.empty_like(C), u.new_empty((Dch,), **f32), dz, u.new_empty((Dch,), **f32))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus, ctx.backend = delta_softplus, backend
    ctx.has_D, ctx.has_z, ctx.has_bias = D is not None, z is not None, delta_bias is not None


def _backward(ctx, dout, dlast_state):  # no gradient flows through last_state (as in mamba_ssm)
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias = _selective_scan_backward_op(
        dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.backend)
    return (du, ddelta, dA, dB, dC, dD if ctx.has_D else None, dz if ctx.has_z else None,
            dbias if ctx.has_bias else None, None, None)


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def check_selective_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Raise a clear error for inputs outside the op's contract (shapes, dtypes, devices, groups, sizes)."""
    check_tensor("u", u, (None, None, None), IO_DTYPES + (torch.float64,))
    bsz, Dch, L = u.shape
    dev = u.device
    check_tensor("delta", delta, (bsz, Dch, L), (u.dtype,), dev)
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError("complex A is not supported: A must be a real (D, N) float32 tensor")
    check_tensor("A", A, (Dch, None), PARAM_DTYPES, dev)
    N = A.shape[1]
    groups = {}
    for name, t in (("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or t.dim() == 2:  # input-independent
            check_tensor(name, t, (Dch, N), PARAM_DTYPES, dev)
            continue
        if t.is_complex():
            raise TypeError(f"complex {name} is not supported")
        shape = (bsz, N, L) if t.dim() == 3 else (bsz, None, N, L)
        check_tensor(name, t, shape, (u.dtype,), dev)
        G = 1 if t.dim() == 3 else t.shape[1]
        if G == 0 or Dch % G:
            raise ValueError(f"{name} has {G} groups, which do not divide the {Dch} channels")
        groups[name] = G
    if len(set(groups.values())) > 1:
        raise ValueError(f"B and C must have the same number of groups, got {groups['B']} and {groups['C']}")
    if z is not None:
        check_tensor("z", z, (bsz, Dch, L), (u.dtype,), dev)
    if D is not None:
        check_tensor("D", D, (Dch,), PARAM_DTYPES, dev)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, (Dch,), PARAM_DTYPES, dev)
    if bsz == 0 or Dch == 0 or L == 0 or N == 0:
        raise ValueError(f"selective_scan got an empty input: u {tuple(u.shape)}, A {tuple(A.shape)}")


def _normalise(u, delta, A, B, C, D, z, delta_bias):
    """The backends' layout: contiguous; 3-D B/C as one group; A, D, delta_bias, constant B/C in fp32."""
    f32 = lambda t: None if t is None else t.to(torch.float32).contiguous()  # noqa: E731
    io = lambda t: None if t is None else t.contiguous()  # noqa: E731
    B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (B, C))
    B, C = (f32(t) if t.dim() == 2 else io(t) for t in (B, C))
    return io(u), io(delta), f32(A), B, C, f32(D), io(z), f32(delta_bias)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False):
    """Mamba S6 selective scan (the semantics of mamba_ssm's ``selective_scan_fn``).

    Args:
        u, delta: (batch, D, L) in fp32, fp16 or bf16 (or float64, which runs the float64 reference).
        A: (D, N) real fp32 state matrix (negative for a stable scan); complex A is not supported.
        B, C: each either variable, (batch, N, L) or grouped (batch, G, N, L) with G dividing D (channel d uses
            group d // (D / G)), in u's dtype; or input-independent, (D, N) fp32.
        D: (D,) fp32 skip weights or None. z: (batch, D, L) gate or None. delta_bias: (D,) fp32 or None.
        delta_softplus: dt = softplus(delta + delta_bias) (identity above 20) instead of delta + delta_bias.
        return_last_state: also return the state after the last step (no gradient flows through it).
    h_t = exp(dt·A)·h_{t-1} + dt·B_t·u_t, y_t = <C_t, h_t> + D·u_t, out = y·silu(z) (or y without z); internal
    math and the state are fp32 on every backend.
    Returns: out (batch, D, L) in u's dtype, or ``(out, last_state)`` with last_state (batch, D, N) fp32.
    """
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    backend = _op.backend_for(u, d_state=A.shape[1])
    if backend == "reference":
        out, last_state = reference.selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:
        out, last_state = _selective_scan_op(*_normalise(u, delta, A, B, C, D, z, delta_bias), delta_softplus,
                                             backend)
    return (out, last_state.detach()) if return_last_state else out
