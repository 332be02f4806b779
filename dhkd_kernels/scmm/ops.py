"""Public SCMM ops: validation, backend choice, torch custom ops with fake kernels and autograd.

The fused SCMM forward is
    s = two_scale(x)               fused kernel (pool, both depth-wise convs, upsample, concat in one pass)
    G = conv1x1(s, aggr)           library GEMM
    y = relu(G) * x + x            fused gating + residual epilogue kernel
    f = conv1x1(y, proj) + x       library GEMM plus add
and its backward runs the two fused kernels' backward ops (``dhkd::scmm_two_scale_backward``,
``dhkd::scmm_gate_backward``) between the library's GEMM gradients. Backends live in
``dhkd_kernels/scmm/{cpu,cuda,triton}.py`` and implement :class:`SCMMBackend`.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .. import registry
from .._binary_op import binary_custom_op
from .._checks import IO_DTYPES, check_tensor
from . import reference

OP = "scmm_modulate"


class SCMMBackend(Protocol):
    """What an SCMM kernel backend module defines. x, s, ds, dx are any strided (B, C, H, W) tensors; wa, wb
    (C/2, 9) and ba, bb (C/2,) fp32 contiguous; weight gradients come back fp32 in those shapes. The gate
    tensors share one dense layout (:func:`dense_format`)."""

    def two_scale_forward(self, x, wa, ba, wb, bb) -> torch.Tensor:
        """s = concat(dw3x3(x_a, wa) + ba, up(dw3x3(adaptive_maxpool(x_b), wb) + bb)), x's memory format."""

    def two_scale_backward(self, ds, x, wa, wb) -> tuple[torch.Tensor, ...]:
        """(dx, dwa, dba, dwb, dbb) of the two-scale branch; the weight and bias gradients in fp32."""

    def gate_forward(self, G, x) -> torch.Tensor:
        """y = relu(G) * x + x."""

    def gate_backward(self, dy, G, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(dG, dx) = (dy * x * [G > 0], dy * (relu(G) + 1))."""


# Preference per device: the default, compiled first (benchmarks/kernels_fused.py measures the order).
_op = registry.register_op(OP, __package__, SCMMBackend, symbol="scmm_two_scale_fwd")
_impl = _op.implementation


def dense_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last when ``t`` is stored that way, else the contiguous (NCHW) format."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _flat_weights(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], 9).to(torch.float32).contiguous()


# ---- two-scale depth-wise branch -------------------------------------------------------------------
@torch.library.custom_op("dhkd::scmm_two_scale", mutates_args=())
def _two_scale_op(x: torch.Tensor, wa: torch.Tensor, ba: torch.Tensor, wb: torch.Tensor, bb: torch.Tensor,
                  backend: str) -> torch.Tensor:
    return _impl(backend).two_scale_forward(x, _flat_weights(wa), ba.float().contiguous(), _flat_weights(wb),
                                            bb.float().contiguous())


@_two_scale_op.register_fake
def _(x, wa, ba, wb, bb, backend):
    return torch.empty_like(x)


@torch.library.custom_op("dhkd::scmm_two_scale_backward", mutates_args=())
def _two_scale_backward_op(ds: torch.Tensor, x: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor]:
    dx, dwa, dba, dwb, dbb = _impl(backend).two_scale_backward(ds, x, _flat_weights(wa), _flat_weights(wb))
    return (dx, dwa.reshape(wa.shape).to(wa.dtype), dba.to(wa.dtype), dwb.reshape(wb.shape).to(wb.dtype),
            dbb.to(wb.dtype))


@_two_scale_backward_op.register_fake
def _(ds, x, wa, wb, backend):
    half = wa.shape[0]
    return (torch.empty_like(x), torch.empty_like(wa), wa.new_empty((half,)), torch.empty_like(wb),
            wb.new_empty((half,)))


def _two_scale_setup(ctx, inputs, output):
    x, wa, ba, wb, bb, backend = inputs
    ctx.save_for_backward(x, wa, wb)
    ctx.backend = backend


def _two_scale_backward(ctx, ds):
    x, wa, wb = ctx.saved_tensors
    dx, dwa, dba, dwb, dbb = _two_scale_backward_op(ds, x, wa, wb, ctx.backend)
    return dx, dwa, dba, dwb, dbb, None


_two_scale_op.register_autograd(_two_scale_backward, setup_context=_two_scale_setup)


# ---- gating + residual epilogue --------------------------------------------------------------------
def _dense_like(G: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=dense_format(x))


def _gate_forward(G, x, backend):
    fmt = dense_format(x)
    return _impl(backend).gate_forward(G.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt))


def _gate_backward(dy, G, x, backend):
    fmt = dense_format(x)
    return _impl(backend).gate_backward(dy.contiguous(memory_format=fmt), G.contiguous(memory_format=fmt),
                                        x.contiguous(memory_format=fmt))


_gate_op = binary_custom_op("scmm_gate", _gate_forward, _gate_backward, _dense_like,
                            lambda G, x: (_dense_like(G, x), _dense_like(G, x)))  # relu(G) * x + x


# ---- public functions ------------------------------------------------------------------------------
def _check_x(x: torch.Tensor) -> None:
    check_tensor("x", x, (None, None, None, None), IO_DTYPES + (torch.float64,))
    _, Cch, H, W = x.shape
    if Cch % 2 or Cch == 0:
        raise ValueError(f"scmm_modulate needs a positive even channel count to split in halves, got {Cch}")
    if H < 2 or W < 2:
        raise ValueError(f"scmm_modulate needs H, W >= 2 (it pools to half resolution), got {H}x{W}")
    if x.shape[0] == 0:
        raise ValueError("scmm_modulate got an empty batch")


def _check_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias) -> None:
    half = x.shape[1] // 2
    for name, t, shape in (("dw_a_weight", dw_a_weight, (half, 1, 3, 3)), ("dw_a_bias", dw_a_bias, (half,)),
                           ("dw_b_weight", dw_b_weight, (half, 1, 3, 3)), ("dw_b_bias", dw_b_bias, (half,))):
        check_tensor(name, t, shape, (x.dtype,), x.device)


def check_scmm_inputs(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, aggr_weight, aggr_bias,
                      proj_weight, proj_bias) -> None:
    """Raise a clear error naming the argument if any input of :func:`scmm_modulate` is malformed."""
    _check_x(x)
    _check_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias)
    Cch = x.shape[1]
    for name, t, shape in (("aggr_weight", aggr_weight, (Cch, Cch, 1, 1)), ("aggr_bias", aggr_bias, (Cch,)),
                           ("proj_weight", proj_weight, (Cch, Cch, 1, 1)), ("proj_bias", proj_bias, (Cch,))):
        check_tensor(name, t, shape, (x.dtype,), x.device)


def two_scale_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias):
    """The fused two-scale depth-wise branch alone: concat(dw3x3(x_a), up(dw3x3(adaptive_maxpool(x_b))))."""
    _check_x(x)
    _check_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias)
    backend = _op.backend_for(x)
    if backend == "reference":
        return reference.two_scale_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias)
    return _two_scale_op(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, backend)


def gate_residual(G, x):
    """The fused epilogue alone: relu(G) * x + x."""
    check_tensor("x", x, (None, None, None, None), IO_DTYPES + (torch.float64,))
    check_tensor("G", G, tuple(x.shape), (x.dtype,), x.device)
    backend = _op.backend_for(x)
    if backend == "reference":
        return F.relu(G) * x + x
    return _gate_op(G, x, backend)


def scmm_modulate(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, aggr_weight, aggr_bias,
                  proj_weight, proj_bias):
    """SCMM: two-scale depth-wise modulation with gating and residuals (docs/method.md, SCMM steps 2-5).

    x: (batch, C, H, W), NCHW or channels_last, fp32/fp16/bf16 (fp64 runs the reference);
    dw_*_weight: (C/2, 1, 3, 3) and dw_*_bias (C/2,) for the full- and half-scale depth-wise convs;
    aggr_* and proj_*: 1×1 convs (C, C, 1, 1) and (C,). Returns f (batch, C, H, W):
    m = relu(aggr(two_scale(x))); f = proj(m ⊙ x + x) + x. Differentiable in every argument.
    """
    check_scmm_inputs(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, aggr_weight, aggr_bias,
                      proj_weight, proj_bias)
    backend = _op.backend_for(x)
    if backend == "reference":
        return reference.scmm_modulate_reference(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias,
                                                 aggr_weight, aggr_bias, proj_weight, proj_bias)
    s = _two_scale_op(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, backend)
    y = _gate_op(F.conv2d(s, aggr_weight, aggr_bias), x, backend)
    return F.conv2d(y, proj_weight, proj_bias) + x
