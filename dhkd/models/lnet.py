"""Lnet: the structural (convolutional) decoder with SCMM modulation (docs/method.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dhkd_kernels import scmm_modulate

from .student import ChannelMixer


class SCMM(nn.Module):
    """Two-scale depth-wise modulation with gating and residuals (computed by ``dhkd_kernels.scmm_modulate``)."""

    def __init__(self, channels: int = 384):
        super().__init__()
        half = channels // 2
        self.dw_a = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.dw_b = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.aggr = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The SCMM-modulated map f = proj(m ⊙ x + x) + x through the fused op."""
        params = (self.dw_a.weight, self.dw_a.bias, self.dw_b.weight, self.dw_b.bias,
                  self.aggr.weight, self.aggr.bias, self.proj.weight, self.proj.bias)
        # the op wants weights in the input's dtype: cast as autocast does for the library's convolutions
        return scmm_modulate(x, *(p.to(x.dtype) for p in params))


class Lnet(nn.Module):
    """f_M → bicubic ×2 → 3×3 conv + ReLU → bicubic to the feature size → 3×3 conv → channel mixer → SCMM."""

    def __init__(self, channels: int = 384, width: int = 384, hidden: int = 768, use_scmm: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.mixer = ChannelMixer(width, hidden, channels)
        self.scmm = SCMM(channels) if use_scmm else None

    def forward(self, f_m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """f_L (b, C, *size) from the bottleneck map f_M."""
        h, w = size
        x = F.interpolate(f_m, size=(max(1, h // 2), max(1, w // 2)), mode="bicubic", align_corners=False)
        x = F.relu(self.conv1(x))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        x = self.mixer(self.conv2(x))
        return self.scmm(x) if self.scmm is not None else x
