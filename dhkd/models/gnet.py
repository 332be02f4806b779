"""Gnet: the logical (global) decoder with HSTM stages (docs/method.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ss2d import HSTM


class Gnet(nn.Module):
    """f_M → k×k collapse conv → 3×3 conv → [bicubic resize → HSTM → dropout] per stage → conv head.

    Stage sizes are the feature map size divided by ``stages`` (16, 8, 2, 1 → 4, 8, 32, 64 at 256²), so
    they follow the input size. With ``use_hstm=False`` each stage is a 3×3 conv + ReLU (ablation).
    """

    def __init__(self, channels: int = 384, bottleneck: int = 64, kernel: int = 16, width: int = 128,
                 head: tuple[int, int] = (256, 512), stages: tuple[int, ...] = (16, 8, 2, 1),
                 use_hstm: bool = True, dropout: float = 0.2, d_state: int = 16, ssm_ratio: float = 2.0):
        super().__init__()
        self.kernel, self.stages = kernel, tuple(stages)
        self.collapse = nn.Conv2d(channels, bottleneck, kernel)
        self.lift = nn.Conv2d(bottleneck, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            HSTM(width, d_state, ssm_ratio) if use_hstm else nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                                                          nn.ReLU())
            for _ in self.stages)
        self.dropout = nn.Dropout(dropout)
        h1, h2 = head
        self.head1 = nn.Conv2d(width, h1, 3, padding=1)
        self.head2 = nn.Conv2d(h1, h2, 3, padding=1)
        self.head3 = nn.Conv2d(h2, channels, 3, padding=1)
        self.head4 = nn.Conv2d(channels, channels, 3, padding=1)

    def stage_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The HSTM stage resolutions for a feature map of ``size``."""
        return [(max(1, size[0] // d), max(1, size[1] // d)) for d in self.stages]

    def forward(self, f_m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """f_G (b, C, *size) from the bottleneck map f_M."""
        x = self.lift(self.collapse(f_m))
        for block, stage in zip(self.blocks, self.stage_sizes(size)):
            x = F.interpolate(x, size=stage, mode="bicubic", align_corners=False)
            x = self.dropout(block(x))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False) if x.shape[-2:] != size else x
        x = self.dropout(F.relu(self.head1(x)))
        x = F.relu(self.head3(self.head2(x)))
        return self.head4(x)
