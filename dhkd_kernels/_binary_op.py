"""Custom ops of two tensors and a backend name, with a backward op and autograd, from plain functions.

The fused epilogues (SCMM's gate, FCCM's pool+bias+ReLU and bias+GELU) share this shape: an op
``dhkd::<name>(a, b, backend) -> out`` and ``dhkd::<name>_backward(dout, a, b, backend) -> (da, db)``, the
backward saving the two inputs. Both are torch custom ops with fake kernels, so they trace under
``torch.compile`` and pass ``torch.library.opcheck``.
"""
from __future__ import annotations

from typing import Callable

import torch

Forward = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]
Backward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]]


def binary_custom_op(name: str, forward: Forward, backward: Backward,
                     fake_forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     fake_backward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
    """Register ``dhkd::<name>`` (computed by ``forward(a, b, backend)``) and ``dhkd::<name>_backward``
    (``backward(dout, a, b, backend) -> (da, db)``); ``fake_forward(a, b)`` / ``fake_backward(a, b)`` give the
    outputs' metadata. Returns the forward op, differentiable in ``a`` and ``b``."""

    @torch.library.custom_op(f"dhkd::{name}", mutates_args=())
    def op(a: torch.Tensor, b: torch.Tensor, backend: str) -> torch.Tensor:
        return forward(a, b, backend)

    @op.register_fake
    def _(a, b, backend):
        return fake_forward(a, b)

    @torch.library.custom_op(f"dhkd::{name}_backward", mutates_args=())
    def backward_op(dout: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        return backward(dout, a, b, backend)

    @backward_op.register_fake
    def _(dout, a, b, backend):
        return fake_backward(a, b)

    def setup(ctx, inputs, output):
        a, b, backend = inputs
        ctx.save_for_backward(a, b)
        ctx.backend = backend

    def grad(ctx, dout):
        a, b = ctx.saved_tensors
        da, db = backward_op(dout, a, b, ctx.backend)
        return da, db, None

    op.register_autograd(grad, setup_context=setup)
    return op
