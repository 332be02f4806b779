"""FCCM: feature compression channel mixer, f_S (C×h×w) → f_M (C×h/4×w/4) (docs/method.md)."""
from __future__ import annotations

import torch
from torch import nn

from dhkd_kernels import fccm_forward


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
        """f_M (b, C, h/4, w/4) of the student features f_S through the fused FCCM op."""
        params = [self.down.weight, self.down.bias]
        if self.use_mixer:
            params += [self.mix1.weight, self.mix1.bias, self.mix2.weight, self.mix2.bias]
        # the op wants weights in the input's dtype: cast as autocast does for the library's convolutions
        return fccm_forward(x, *(p.to(x.dtype) for p in params))
