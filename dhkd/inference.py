"""Deployment module: an image batch in, the normalised anomaly map and the image score out, in one call.

The teacher channel statistics are folded into the teacher's last convolution and the quantile
normalisation into three constants, so inference is one plain ``nn.Module`` (no dropout, no buffers to
fit) that gives exactly the evaluator's numbers and exports to ONNX / ``torch.export``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dhkd.models import DHKD


def _fold_normalisation(teacher: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> nn.Module:
    """(conv(x) − mean)/std as one conv: W/std and (b − mean)/std."""
    teacher = copy.deepcopy(teacher)
    last = teacher.convs[-1]
    scale = 1.0 / std.reshape(-1)
    with torch.no_grad():
        last.weight.mul_(scale[:, None, None, None])
        last.bias.copy_((last.bias - mean.reshape(-1)) * scale)
    return teacher


class AnomalyDetector(nn.Module):
    """``detector(x) -> (anomaly_map (b, 1, H, W), score (b,))`` for ImageNet-normalised x (b, 3, H, W).

    anomaly_map = w_L·map_L + w_G·map_G + c at feature resolution, bilinearly resized to ``output_size`` (default:
    the input size), with w = 0.05/(q_b − q_a) and c = −(w_L·q_a,L + w_G·q_a,G); score = max of the map.
    """

    def __init__(self, model: DHKD, output_size: tuple[int, int] | None = None):
        super().__init__()
        if not model.has_quantiles:
            raise ValueError("the model's map quantiles are not fitted; evaluate it (or load a trained "
                             "checkpoint) before building an AnomalyDetector")
        self.teacher = _fold_normalisation(model.teacher, model.teacher_mean, model.teacher_std)
        self.encoder, self.fccm = copy.deepcopy(model.encoder), copy.deepcopy(model.fccm)
        self.lnet, self.gnet = copy.deepcopy(model.lnet), copy.deepcopy(model.gnet)
        qa_l, qb_l, qa_g, qb_g = model.quantiles.double().tolist()
        w_l, w_g = 0.05 / (qb_l - qa_l), 0.05 / (qb_g - qa_g)
        self.register_buffer("weights", torch.tensor([w_l, w_g, -(w_l * qa_l + w_g * qa_g)], dtype=torch.float32))
        self.output_size = output_size
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.teacher(x)
        f_s = self.encoder(x)
        size = (f_s.shape[-2], f_s.shape[-1])
        f_m = self.fccm(f_s)
        f_l, f_g = self.lnet(f_m, size), self.gnet(f_m, size)
        w = self.weights.to(t.dtype)
        amap = (w[0] * ((t - f_l) ** 2).mean(1, keepdim=True) + w[1] * ((f_g - f_s) ** 2).mean(1, keepdim=True)
                + w[2])
        amap = F.interpolate(amap.float(), size=self.output_size or (x.shape[-2], x.shape[-1]), mode="bilinear",
                             align_corners=False)
        return amap, amap.flatten(1).amax(1)
