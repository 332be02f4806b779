"""Public FCCM ops: validation, backend choice, torch custom ops with fake kernels and autograd.

The fused FCCM forward keeps every convolution in the library and fuses what is memory-bound around them:
    z = conv(x, down_weight, stride 2, pad 1)      library, no bias
    p = relu(maxpool2x2(z + down_bias))            fused kernel  (dhkd::fccm_pool_relu)
    h = conv3x3(p, mix1_weight)                    library, no bias
    g = gelu(h + mix1_bias)                        fused kernel  (dhkd::fccm_bias_gelu)
    f = conv1x1(g, mix2_weight, mix2_bias)         library
Both fused kernels have fused backward ops (gradient routed to the recomputed argmax / GELU derivative,
plus the bias gradient). Backends live in ``dhkd_kernels/fccm/{cpu,cuda,triton}.py`` and implement
:class:`FCCMBackend`.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .. import registry
from .._binary_op import binary_custom_op
from .._checks import IO_DTYPES, check_tensor
from . import reference
from .cpu import pooled_empty

OP = "fccm"
# Backends whose fused bias+GELU beats the library's conv-with-bias + GELU inside fccm_forward. On CPU it
# does not (benchmarks/kernels_fused.py: 0.64-0.96× of the unfused pair; oneDNN folds the bias into the
# convolution for free), so there the library pair runs; GPU backends keep the fused epilogue.
_FUSED_GELU_BACKENDS = ("cuda", "triton")




class FCCMBackend(Protocol):
    """What an FCCM kernel backend module defines. z, h, dout are any strided (B, C, H, W) tensors and the
    outputs keep their memory format; bias is (C,) fp32 contiguous and dbias comes back fp32."""

    def pool_relu_forward(self, z, bias) -> torch.Tensor:
        """relu(maxpool2x2(z + bias)) (floor of H/2, W/2)."""

    def pool_relu_backward(self, dout, z, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """(dz, dbias): dout routed to each window's argmax where the output is positive."""

    def bias_gelu_forward(self, h, bias) -> torch.Tensor:
        """gelu(h + bias), exact erf."""

    def bias_gelu_backward(self, dout, h, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """(dh, dbias) = (dout * gelu'(h + bias), its sum over batch and pixels)."""


# Preference per device: the default, compiled first (benchmarks/kernels_fused.py measures the order).
_op = registry.register_op(OP, __package__, FCCMBackend, symbol="fccm_pool_relu_fwd")
_impl = _op.implementation


def _f32(bias: torch.Tensor) -> torch.Tensor:
    return bias.detach().to(torch.float32).contiguous()


# ---- the two fused epilogues as custom ops ----------------------------------------------------------
def _epilogue_op(name: str, out_like):
    """``dhkd::fccm_<name>(x, bias, backend)`` on the backend functions ``<name>_forward(x, bias)`` and
    ``<name>_backward(dout, x, bias) -> (dx, dbias)``; ``out_like(x)`` is the fake output."""

    def forward(x, bias, backend):
        return getattr(_impl(backend), f"{name}_forward")(x, _f32(bias))

    def backward(dout, x, bias, backend):
        dx, db = getattr(_impl(backend), f"{name}_backward")(dout, x, _f32(bias))
        return dx, db.to(bias.dtype)

    return binary_custom_op(f"fccm_{name}", forward, backward, lambda x, bias: out_like(x),
                            lambda x, bias: (torch.empty_like(x), torch.empty_like(bias)))


_pool_relu_op = _epilogue_op("pool_relu", pooled_empty)  # relu(maxpool2x2(z + bias))
_bias_gelu_op = _epilogue_op("bias_gelu", torch.empty_like)  # gelu(h + bias)


# ---- public functions ------------------------------------------------------------------------------
def _check_map(name: str, t: torch.Tensor, min_hw: int) -> None:
    check_tensor(name, t, (None, None, None, None), IO_DTYPES + (torch.float64,))
    B, C, H, W = t.shape
    if B == 0 or C == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if H < min_hw or W < min_hw:
        raise ValueError(f"{name} must be at least {min_hw}x{min_hw} spatially, got {H}x{W}")


def fccm_pool_relu(z, bias):
    """Fused relu(maxpool2x2(z + bias[c])): z (B, C, H, W) is the bias-free compression conv output."""
    _check_map("z", z, 2)
    check_tensor("bias", bias, (z.shape[1],), (z.dtype,), z.device)
    backend = _op.backend_for(z)
    if backend == "reference":
        return reference.pool_relu_reference(z, bias)
    return _pool_relu_op(z, bias, backend)


def fccm_bias_gelu(h, bias):
    """Fused gelu(h + bias[c]) (exact erf): h (B, C, H, W) is the bias-free 3×3 mixer conv output."""
    _check_map("h", h, 1)
    check_tensor("bias", bias, (h.shape[1],), (h.dtype,), h.device)
    backend = _op.backend_for(h)
    if backend == "reference":
        return reference.bias_gelu_reference(h, bias)
    return _bias_gelu_op(h, bias, backend)


def fccm_forward(x, down_weight, down_bias, mix1_weight=None, mix1_bias=None, mix2_weight=None,
                 mix2_bias=None):
    """FCCM (docs/method.md): conv k4 s2 p1 -> maxpool 2 -> ReLU -> conv 3×3 -> GELU -> conv 1×1.

    x: (batch, C, H, W) with H, W >= 4, NCHW or channels_last, fp32/fp16/bf16 (fp64 runs the reference).
    down_weight (C, C, 4, 4), down_bias (C,); mix1_weight (hidden, C, 3, 3), mix1_bias (hidden,);
    mix2_weight (C_out, hidden, 1, 1), mix2_bias (C_out,). Pass the mix* arguments as None to stop after the
    compression (the no-mixer ablation). Returns (batch, C_out, H/4, W/4) (floor at each halving).
    """
    _check_map("x", x, 4)
    C = x.shape[1]
    check_tensor("down_weight", down_weight, (None, C, 4, 4), (x.dtype,), x.device)
    Cd = down_weight.shape[0]
    check_tensor("down_bias", down_bias, (Cd,), (x.dtype,), x.device)
    mix = (mix1_weight, mix1_bias, mix2_weight, mix2_bias)
    if any(t is None for t in mix) and not all(t is None for t in mix):
        raise ValueError("fccm_forward needs all four mix* tensors (channel mixer) or none of them")
    if mix1_weight is not None:
        check_tensor("mix1_weight", mix1_weight, (None, Cd, 3, 3), (x.dtype,), x.device)
        hidden = mix1_weight.shape[0]
        check_tensor("mix1_bias", mix1_bias, (hidden,), (x.dtype,), x.device)
        check_tensor("mix2_weight", mix2_weight, (None, hidden, 1, 1), (x.dtype,), x.device)
        check_tensor("mix2_bias", mix2_bias, (mix2_weight.shape[0],), (x.dtype,), x.device)
    backend = _op.backend_for(x)
    if backend == "reference":
        return reference.fccm_reference(x, down_weight, down_bias, *mix)
    p = _pool_relu_op(F.conv2d(x, down_weight, None, stride=2, padding=1), down_bias, backend)
    if mix1_weight is None:
        return p
    if backend in _FUSED_GELU_BACKENDS:
        g = _bias_gelu_op(F.conv2d(p, mix1_weight, None, padding=1), mix1_bias, backend)
    else:
        g = F.gelu(F.conv2d(p, mix1_weight, mix1_bias, padding=1))
    return F.conv2d(g, mix2_weight, mix2_bias)
