"""mamba_ssm-compatible selective scan: replace ``from mamba_ssm.ops.selective_scan_interface import
selective_scan_fn`` by ``from dhkd_kernels.compat.mamba import selective_scan_fn``.

Same signature, defaults and return conventions as mamba_ssm: ``out``, or ``(out, last_state)`` with
``return_last_state=True`` (no gradient flows through last_state). Shapes: u, delta, z (batch, D, L); A (D, N)
real; B, C (batch, N, L), (batch, G, N, L) or input-independent (D, N); D, delta_bias (D,) fp32.
Complex A is not supported (a clear error).
"""
from __future__ import annotations

import torch

from .. import use_backend
from ..selective_scan import selective_scan


def selective_scan_fn(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                      delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                      return_last_state: bool = False):
    """mamba_ssm's ``selective_scan_fn`` on this package's kernels (backend chosen by device).

    Returns out (batch, D, L) in u's dtype, or ``(out, last_state)`` with last_state (batch, D, N) fp32.
    """
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False):
    """mamba_ssm's ``selective_scan_ref``: the same computation on the plain-PyTorch reference."""
    with use_backend("reference"):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
