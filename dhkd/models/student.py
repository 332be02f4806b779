"""Student encoder F_S: a PDN-like network with max-pooling (docs/method.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StudentEncoder(nn.Module):
    """conv k4 p3 → maxpool → conv k4 p3 → conv k3 p1 → maxpool → conv k1 → conv k4 → conv k1.

    ReLU after every conv but the last; output ``channels`` maps of the teacher's size.
    """

    def __init__(self, widths: tuple[int, int, int] = (128, 256, 512), channels: int = 384):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(3, w1, 4, padding=3)
        self.conv2 = nn.Conv2d(w1, w2, 4, padding=3)
        self.conv3 = nn.Conv2d(w2, w2, 3, padding=1)
        self.conv4 = nn.Conv2d(w2, w3, 1)
        self.conv5 = nn.Conv2d(w3, channels, 4)
        self.conv6 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f_S (b, C, h, w) of an image batch."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2, padding=1)
        x = F.relu(self.conv3(F.relu(self.conv2(x))))
        x = F.max_pool2d(x, 2, 2, padding=1)
        x = F.relu(self.conv5(F.relu(self.conv4(x))))
        return self.conv6(x)


class ChannelMixer(nn.Module):
    """3×3 conv to ``hidden`` → GELU → 1×1 conv to ``out_channels`` (no residual)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.mix1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.mix2 = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv1×1(gelu(conv3×3(x)))."""
        return self.mix2(F.gelu(self.mix1(x)))
