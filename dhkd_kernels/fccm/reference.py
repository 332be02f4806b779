"""Plain-PyTorch reference of FCCM, the feature compression channel mixer (docs/method.md)."""
from __future__ import annotations

import torch.nn.functional as F


def pool_relu_reference(z, bias):
    """relu(maxpool2x2(z + bias)): what follows the bias-free k4 s2 compression conv."""
    return F.relu(F.max_pool2d(z + bias.view(1, -1, 1, 1), 2, 2))


def bias_gelu_reference(h, bias):
    """gelu(h + bias) with the exact erf GELU: what follows the bias-free 3×3 mixer conv."""
    return F.gelu(h + bias.view(1, -1, 1, 1))


def fccm_reference(x, down_weight, down_bias, mix1_weight=None, mix1_bias=None, mix2_weight=None,
                   mix2_bias=None):
    """conv k4 s2 p1 -> maxpool 2 -> ReLU -> [conv 3×3 p1 -> GELU -> conv 1×1] (mixer when mix* given)."""
    out = F.relu(F.max_pool2d(F.conv2d(x, down_weight, down_bias, stride=2, padding=1), 2, 2))
    if mix1_weight is None:
        return out
    return F.conv2d(F.gelu(F.conv2d(out, mix1_weight, mix1_bias, padding=1)), mix2_weight, mix2_bias)
