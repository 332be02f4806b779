"""FCCM: feature compression channel mixer, f_S (C×h×w) → f_M (C×h/4×w/4) (DHKD_SPEC §FCCM)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FCCM(nn.Module):
    """conv k4 s2 p1 → maxpool 2 → ReLU → [3×3 conv to ``hidden`` → GELU → 1×1 conv back].

    With ``use_mixer=False`` (the ablation baseline) only the compression is kept.
    """

    def __init__(self, channels: int = 384, hidden: int = 768, use_mixer: bool = True):
        super().__init__()
        self.down = nn.Conv2d(channels, channels, 4, stride=2, padding=1)
        self.use_mixer = use_mixer
        if use_mixer:
            self.mix1 = nn.Conv2d(channels, hidden, 3, padding=1)
            self.mix2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.down(x), 2, 2))
        if self.use_mixer:
            x = self.mix2(F.gelu(self.mix1(x)))
        return x
