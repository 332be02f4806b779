"""DHKD's frozen teachers: the patch description network (PDN-S/M, as in EfficientAD) or a pretrained backbone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.common import IMAGENET_MEAN, IMAGENET_STD

# Per size: (conv specs (in, out, kernel, padding-when-padded), indices after which an avg-pool follows,
# index of the last conv (no ReLU after it)).
_PDN_LAYERS = {
    "small": ([(3, 128, 4, 3), (128, 256, 4, 3), (256, 256, 3, 1), (256, None, 4, 0)], (0, 1)),
    "medium": ([(3, 256, 4, 3), (256, 512, 4, 3), (512, 512, 1, 0), (512, 512, 3, 1), (512, None, 4, 0),
                (None, None, 1, 0)], (0, 1)),
}


class PDN(nn.Module):
    """EfficientAD's patch description network: four (small) or six (medium) convolutions in ``convs``.

    With ``padding=True`` (DHKD's teacher) a 256×256 input gives a 64×64 map; without, 56×56. The
    receptive field is 33×33 pixels. The input is an ImageNet-normalised image batch. ``width_div``
    divides the hidden widths (1 = EfficientAD's network; larger only for test-sized models).
    """

    def __init__(self, size: str = "medium", out_channels: int = 384, padding: bool = True, width_div: int = 1):
        super().__init__()
        if size not in _PDN_LAYERS:
            raise ValueError(f"PDN size must be 'small' or 'medium', got {size!r}")
        specs, self.pool_after = _PDN_LAYERS[size]
        self.size, self.padding, self.out_channels = size, padding, out_channels

        def width(c):  # hidden widths may be divided (test-sized networks); 3 and the output stay
            return out_channels if c is None else (c if c == 3 else c // width_div)

        self.convs = nn.ModuleList(nn.Conv2d(width(cin), width(cout), k, padding=p if padding else 0)
                                   for cin, cout, k, p in specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The patch descriptors of an image batch (ReLU after every convolution but the last)."""
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i != last:
                x = F.relu(x)
            if i in self.pool_after:
                x = F.avg_pool2d(x, 2, 2, padding=1 if self.padding else 0)
        return x


class BackboneTeacher(nn.Module):
    """A pretrained backbone's projected patch descriptors as the teacher, with no distillation step.

    The descriptors are the distillation target of :mod:`dhkd.teacher.backbones` (e.g. EfficientNet-Lite0's
    stride-8 and stride-16 features, 3×3-aggregated and pooled to ``out_channels``), but computed from the image
    at its own size, the scale at which the training-free kNN baseline uses them, rather than at twice the size
    a distilled PDN is trained towards. Their stride-8 grid is bilinearly resized to the students' grid
    ``grid(size)`` (64×64 at 256²). The input is the same ImageNet-normalised batch the PDN takes.
    """

    def __init__(self, backbone: str, out_channels: int, grid):
        super().__init__()
        from ..teacher.backbones import build_backbone  # lazily: the backbone packages are an optional extra

        self.grid = grid
        self.target = build_backbone(backbone, out_channels=out_channels)
        self.register_buffer("mean", torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The patch descriptors of an ImageNet-normalised batch on the students' grid."""
        f = self.target(x * self.std + self.mean)
        return F.interpolate(f, size=self.grid(tuple(x.shape[-2:])), mode="bilinear", align_corners=False)
