"""Public SCMM modulation op: validation and backend choice (fused backends registered by their modules)."""
from __future__ import annotations

import torch

from .. import _registry
from .._checks import IO_DTYPES, check_tensor
from . import reference

OP = "scmm_modulate"
_registry.register_op(OP, preference={"cpu": ["cpu", "reference"], "cuda": ["cuda", "triton", "reference"]})


def check_scmm_inputs(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, aggr_weight, aggr_bias,
                      proj_weight, proj_bias) -> None:
    check_tensor("x", x, (None, None, None, None), IO_DTYPES + (torch.float64,))
    _, Cch, H, W = x.shape
    if Cch % 2:
        raise ValueError(f"scmm_modulate needs an even channel count to split in halves, got {Cch}")
    if H < 2 or W < 2:
        raise ValueError(f"scmm_modulate needs H, W >= 2 (it pools to half resolution), got {H}x{W}")
    half, dev = Cch // 2, x.device
    for name, t, shape in (("dw_a_weight", dw_a_weight, (half, 1, 3, 3)), ("dw_a_bias", dw_a_bias, (half,)),
                           ("dw_b_weight", dw_b_weight, (half, 1, 3, 3)), ("dw_b_bias", dw_b_bias, (half,)),
                           ("aggr_weight", aggr_weight, (Cch, Cch, 1, 1)), ("aggr_bias", aggr_bias, (Cch,)),
                           ("proj_weight", proj_weight, (Cch, Cch, 1, 1)), ("proj_bias", proj_bias, (Cch,))):
        check_tensor(name, t, shape, (x.dtype,), dev)


def scmm_modulate(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, aggr_weight, aggr_bias,
                  proj_weight, proj_bias):
    """SCMM: two-scale depth-wise modulation with gating and residuals (DHKD_SPEC §Lnet steps 2-5).

    x: (batch, C, H, W); dw_*_weight: (C/2, 1, 3, 3) and dw_*_bias (C/2,) for the full- and half-scale
    depth-wise convs; aggr_* and proj_*: 1×1 convs (C, C, 1, 1) and (C,). Returns f (batch, C, H, W):
    m = relu(aggr(two_scale(x))); f = proj(m ⊙ x + x) + x.
    """
    check_scmm_inputs(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias, aggr_weight, aggr_bias,
                      proj_weight, proj_bias)
    _registry.choose(OP, x.device)
    return reference.scmm_modulate_reference(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias,
                                             aggr_weight, aggr_bias, proj_weight, proj_bias)
