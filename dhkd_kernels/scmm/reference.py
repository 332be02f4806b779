"""Plain-PyTorch reference of the SCMM modulation (docs/method.md, Lnet, SCMM steps 2-5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def two_scale_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias):
    """Channels split in halves a, b: a -> depth-wise 3×3; b -> adaptive max-pool to (H//2, W//2) ->
    depth-wise 3×3 -> nearest upsample to (H, W); concatenated back to x's channel count."""
    H, W = x.shape[-2:]
    a, b = x.chunk(2, dim=1)
    sa = F.conv2d(a, dw_a_weight, dw_a_bias, padding=1, groups=a.shape[1])
    pb = F.adaptive_max_pool2d(b, (H // 2, W // 2))
    sb = F.conv2d(pb, dw_b_weight, dw_b_bias, padding=1, groups=b.shape[1])
    sb = F.interpolate(sb, size=(H, W), mode="nearest")
    return torch.cat([sa, sb], dim=1)


def scmm_modulate_reference(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias,
                            aggr_weight, aggr_bias, proj_weight, proj_bias):
    """f = proj(relu(aggr(two_scale(x))) ⊙ x + x) + x, with aggr and proj 1×1 convolutions."""
    s = two_scale_depthwise(x, dw_a_weight, dw_a_bias, dw_b_weight, dw_b_bias)
    m = F.relu(F.conv2d(s, aggr_weight, aggr_bias))
    y = m * x + x
    return F.conv2d(y, proj_weight, proj_bias) + x
