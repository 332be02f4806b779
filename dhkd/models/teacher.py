"""Patch description network (PDN): DHKD's frozen teacher, as in EfficientAD (PDN-S and PDN-M)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
