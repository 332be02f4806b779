"""EfficientAD-M as a latency peer: PDN-M teacher (384 outputs), PDN-M student (768 outputs), autoencoder.

Written from the published description (EfficientAD paper and its latency script; docs/method.md), at inference
only: dropout is absent, the teacher's channel normalisation is folded into its last convolution and the
two quantile normalisations plus the 0.5/0.5 combination into three constants, as in the EfficientAD
latency benchmark. Weights are random unless loaded; latency does not depend on them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dhkd.models.calibration import normalisation_weights, normalise_maps
from dhkd.models.scoring import map_and_score
from dhkd.models.teacher import PDN

OUT_CHANNELS = 384


def ae_decoder_sizes(image_size: int) -> list[int]:
    """Spatial sizes the autoencoder's decoder resizes to before each convolution (3, 8, 15, 32, 63, 127, 56
    at 256): H/64−1, H/32, H/16−1, H/8, H/4−1, H/2−1, then the unpadded PDN output size ceil(H/4)−8."""
    h = image_size
    return [h // 64 - 1, h // 32, h // 16 - 1, h // 8, h // 4 - 1, h // 2 - 1, -(-h // 4) - 8]


class Autoencoder(nn.Module):
    """Encoder: five k4 s2 p1 convs (3→32→32→64→64→64, ReLU) and a k8 conv to a 64-vector.
    Decoder: bilinear resize before each of six k4 p2 convs (64→64, ReLU) and a final resize, then
    k3 p1 64→64 (ReLU) and k3 p1 64→``out_channels``."""

    def __init__(self, image_size: int = 256, out_channels: int = OUT_CHANNELS):
        super().__init__()
        if image_size < 256:  # five stride-2 convs then a k8 conv: at least 8×8 left after /32
            raise ValueError(f"EfficientAD's autoencoder needs images of at least 256×256, got {image_size}")
        self.sizes = ae_decoder_sizes(image_size)
        widths = [3, 32, 32, 64, 64, 64]
        self.enc = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.enc_last = nn.Conv2d(64, 64, 8)
        self.dec = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in range(6))
        self.dec_last1 = nn.Conv2d(64, 64, 3, padding=1)
        self.dec_last2 = nn.Conv2d(64, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct the teacher features from the image through the bottleneck."""
        for conv in self.enc:
            x = F.relu(conv(x))
        x = self.enc_last(x)
        for conv, s in zip(self.dec, self.sizes):
            x = F.relu(conv(F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)))
        s = self.sizes[-1]
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.dec_last2(F.relu(self.dec_last1(x)))


class EfficientADM(nn.Module):
    """``model(x) -> (anomaly_map (b, 1, H, W), score (b,))`` for an ImageNet-normalised batch, like
    :class:`dhkd.runtime.AnomalyDetector`, calibrated as DHKD is (:mod:`dhkd.models.calibration`).

    map = 0.5·norm(ST) + 0.5·norm(AE) at 56² (at 256²), padded by 4 and bilinearly resized to the input;
    ST = mean_c (T̂ − S[:384])², AE = mean_c (A − S[384:])², norm(m) = 0.1·(m − q_a)/(q_b − q_a).
    """

    def __init__(self, image_size: int = 256, teacher_mean: torch.Tensor | None = None,
                 teacher_std: torch.Tensor | None = None, quantiles: tuple[float, float, float, float] = (0.0, 1.0,
                                                                                                   0.0, 1.0)):
        super().__init__()
        self.teacher = PDN("medium", OUT_CHANNELS, padding=False)
        self.student = PDN("medium", 2 * OUT_CHANNELS, padding=False)
        self.autoencoder = Autoencoder(image_size, OUT_CHANNELS)
        mean = torch.zeros(OUT_CHANNELS) if teacher_mean is None else teacher_mean.reshape(-1).float()
        std = torch.ones(OUT_CHANNELS) if teacher_std is None else teacher_std.reshape(-1).float()
        if mean.numel() != OUT_CHANNELS or std.numel() != OUT_CHANNELS or not bool((std > 0).all()):
            raise ValueError(f"teacher mean/std must have {OUT_CHANNELS} entries and std must be positive")
        last = self.teacher.convs[-1]
        with torch.no_grad():  # (conv(x) − mean)/std as one conv
            last.weight.div_(std[:, None, None, None])
            last.bias.copy_((last.bias - mean) / std)
        self.weights = normalisation_weights(quantiles)  # Python floats: constants in compiled graphs
        self.requires_grad_(False)
        self.eval()

    def raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ST and AE maps at feature resolution (b, 1, h, w)."""
        t, s, a = self.teacher(x), self.student(x), self.autoencoder(x)
        return (((t - s[:, :OUT_CHANNELS]) ** 2).mean(1, keepdim=True),
                ((a - s[:, OUT_CHANNELS:]) ** 2).mean(1, keepdim=True))

    def set_quantiles(self, qa_st: float, qb_st: float, qa_ae: float, qb_ae: float) -> None:
        """Set the map normalisation from the ST and AE map quantiles (fitted by
        :func:`dhkd.models.calibration.fit_quantiles_on` on good images)."""
        self.weights = normalisation_weights((qa_st, qb_st, qa_ae, qb_ae))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map at the input's size, image score) of an image batch."""
        amap = F.pad(normalise_maps(*self.raw_maps(x), self.weights), (4, 4, 4, 4))
        return map_and_score(amap, (x.shape[-2], x.shape[-1]))
