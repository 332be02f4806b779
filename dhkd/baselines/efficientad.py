"""EfficientAD-S/M as a trainable baseline, with any PDN teacher (e.g. the one DHKD uses) or a backbone teacher.

Written from the published description of EfficientAD: a frozen PDN teacher (without padding: 56×56 maps at
256²), a student PDN of the same size with 768 outputs (384 imitate the teacher, 384 the autoencoder) and
the convolutional autoencoder. Training per step on one training image: the student's hard-feature loss on
the teacher (distances at or above their 0.999-quantile), the autoencoder's loss on the teacher for a
colour-jittered copy of the image (brightness, contrast or saturation by a factor in [0.8, 1.2]), and the
student's second half imitating the autoencoder on that copy; Adam (lr 1e-4, weight decay 1e-5), lr ×0.1 at
95 % of the steps (or, with ``lr_decay_time_fraction`` and a time limit, once that share of the time has passed,
whichever comes first, as DHKD's CPU recipe does). The ImageNet penalty is left out (no ImageNet offline), as
in DHKD's CPU recipe.
Maps: ST = mean_c (T̂ − S[:384])², AE = mean_c (A − S[384:])², each normalised with its 0.9 and 0.995
quantiles on the validation good images, averaged and padded by 4 (64×64 at 256²).

With ``teacher_backbone`` set (DHKD's ``teacher=backbone:NAME``), the teacher is that pretrained backbone's
projected 384-d patch descriptors (:class:`dhkd.models.teacher.BackboneTeacher`) instead of a PDN, resized
to the unpadded student's grid (56×56 at 256²), so both methods of a comparison imitate the same teacher.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..benchmark.efficientad import Autoencoder
from ..data.common import IMAGENET_MEAN, IMAGENET_STD
from ..models.calibration import fit_quantiles, normalisation_weights, normalise_maps, teacher_statistics
from ..models.teacher import PDN, BackboneTeacher
from ..train.config import check_lr_decay_time_fraction

OUT_CHANNELS = 384


@dataclass
class EfficientADConfig:
    """Settings of :class:`EfficientAD` and its training."""
    size: str = "small"             # PDN size of teacher and student: "small" (EfficientAD-S) or "medium" (-M)
    image_size: int = 256
    steps: int = 2500
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_decay_fraction: float = 0.95
    hard_quantile: float = 0.999
    jitter: float = 0.2
    seed: int = 0
    time_limit_minutes: float = 0.0  # > 0: stop training after this wall time
    lr_decay_time_fraction: float = 0.0  # > 0 (with a time limit): also decay once this share of it has passed
    width_div: int = 1              # divides the PDNs' hidden widths (1 = EfficientAD; larger for tests only)
    teacher_backbone: str = ""      # a backbone name (e.g. "efficientnet-lite0"): its descriptors are the teacher


class EfficientAD(nn.Module):
    """``fit(train, validation)`` trains the student and autoencoder and fits the map normalisation;
    ``anomaly_map(images)`` returns the combined (b, 1, H, W) map of an ImageNet-normalised batch."""

    def __init__(self, config: EfficientADConfig | None = None, teacher: PDN | None = None):
        super().__init__()
        self.config = cfg = config or EfficientADConfig()
        if cfg.size not in ("small", "medium"):
            raise ValueError(f"EfficientAD size must be 'small' or 'medium', got {cfg.size!r}")
        check_lr_decay_time_fraction(cfg.lr_decay_time_fraction, cfg.time_limit_minutes)
        if cfg.teacher_backbone:
            if teacher is not None:
                raise ValueError("pass either a PDN teacher or teacher_backbone, not both")
            self.teacher = BackboneTeacher(cfg.teacher_backbone, OUT_CHANNELS, self.student_grid)
        else:
            self.teacher = PDN(cfg.size, OUT_CHANNELS, padding=False, width_div=cfg.width_div)
            if teacher is not None:
                if teacher.size != cfg.size:
                    raise ValueError(f"the teacher is a PDN-{teacher.size}, EfficientAD-{cfg.size} needs "
                                     f"PDN-{cfg.size}")
                self.teacher.load_state_dict(teacher.state_dict())
        self.teacher.requires_grad_(False).eval()
        torch.manual_seed(cfg.seed)
        self.student = PDN(cfg.size, 2 * OUT_CHANNELS, padding=False, width_div=cfg.width_div)
        self.autoencoder = Autoencoder(cfg.image_size, OUT_CHANNELS)
        self.register_buffer("teacher_mean", torch.zeros(1, OUT_CHANNELS, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, OUT_CHANNELS, 1, 1))
        self.register_buffer("quantiles", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train_seconds = 0.0
        self.steps_done = 0
        self.lr_decay_step: int | None = None  # the first step trained at the decayed lr (None: not decayed)
        self.final_losses: dict[str, float] = {}

    @property
    def image_size(self) -> int:
        """The square input side."""
        return self.config.image_size

    def train(self, mode: bool = True) -> "EfficientAD":
        """Set train/eval mode; the teacher stays in eval mode (frozen)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def student_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) of the unpadded student's output for an input of ``size`` (56×56 at 256²)."""
        out = self.student(torch.empty(1, 3, *size, device="meta"))
        return tuple(out.shape[-2:])

    def _t_hat(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def _jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A colour-jittered copy of an ImageNet-normalised batch: one of brightness / contrast / saturation."""
        rgb = x * self._std + self._mean
        f = float(rng.uniform(1 - self.config.jitter, 1 + self.config.jitter))
        kind = int(rng.integers(3))
        gray = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
        if kind == 0:
            out = rgb * f
        elif kind == 1:
            out = (rgb - gray.mean(dim=(1, 2, 3), keepdim=True)) * f + gray.mean(dim=(1, 2, 3), keepdim=True)
        else:
            out = (rgb - gray) * f + gray
        return (out.clamp(0, 1) - self._mean) / self._std

    def losses(self, x: torch.Tensor, x_ae: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three EfficientAD training losses for an image batch and its jittered copy."""
        t = self._t_hat(x)
        s = self.student(x)[:, :OUT_CHANNELS]
        d = ((t - s) ** 2).flatten()
        hard = torch.quantile(d.detach(), self.config.hard_quantile) if d.numel() <= 1 << 24 else d.max()
        loss_st = d[d >= hard].mean()
        t_ae = self._t_hat(x_ae)
        a = self.autoencoder(x_ae)
        s_ae = self.student(x_ae)[:, OUT_CHANNELS:]
        loss_ae = ((t_ae - a) ** 2).mean()
        loss_stae = ((a - s_ae) ** 2).mean()
        return {"loss": loss_st + loss_ae + loss_stae, "loss_st": loss_st, "loss_ae": loss_ae,
                "loss_stae": loss_stae}

    def raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ST and AE maps at feature resolution (b, 1, h, w)."""
        t = self._t_hat(x)
        s = self.student(x)
        a = self.autoencoder(x)
        return (((t - s[:, :OUT_CHANNELS]) ** 2).mean(1, keepdim=True),
                ((a - s[:, OUT_CHANNELS:]) ** 2).mean(1, keepdim=True))

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """0.5·norm(ST) + 0.5·norm(AE) padded by 4 (the unpadded PDN's border: 64×64 at 256², the input's
        stride-4 grid), (b, 1, h, w); the evaluator resizes it to each image's original size."""
        m = normalise_maps(*self.raw_maps(x), normalisation_weights(self.quantiles))
        return F.pad(m, (4, 4, 4, 4))

    def fit(self, train, validation) -> "EfficientAD":
        """Train on the good images of ``train`` (batch 1, seeded order), then fit the map quantiles on the
        good images of ``validation``."""
        cfg = self.config
        images = torch.stack([train[i]["image"] for i in range(len(train)) if train.samples[i].label == 0])
        t0 = time.time()
        with torch.no_grad():
            self.teacher_mean.copy_(torch.zeros_like(self.teacher_mean))
            self.teacher_std.copy_(torch.ones_like(self.teacher_std))
            mean, std = teacher_statistics(lambda: (self.teacher(images[i:i + 1]) for i in range(len(images))))
            self.teacher_mean.copy_(mean.view_as(self.teacher_mean))
            self.teacher_std.copy_(std.view_as(self.teacher_std))
        params = list(self.student.parameters()) + list(self.autoencoder.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        decay_step = max(1, int(cfg.lr_decay_fraction * cfg.steps))
        decay_seconds = cfg.lr_decay_time_fraction * 60 * cfg.time_limit_minutes
        self.lr_decay_step = None
        rng = np.random.default_rng(cfg.seed)
        order = np.concatenate([rng.permutation(len(images)) for _ in range(cfg.steps // len(images) + 1)])
        self.train()
        out = {}
        step = 0
        for step in range(cfg.steps):
            elapsed = time.time() - t0
            if cfg.time_limit_minutes > 0 and elapsed > 60 * cfg.time_limit_minutes:
                break
            if self.lr_decay_step is None and (step >= decay_step or 0 < decay_seconds < elapsed):
                self.lr_decay_step = step
                for group in opt.param_groups:
                    group["lr"] = 0.1 * cfg.lr
            x = images[order[step]:order[step] + 1]
            out = self.losses(x, self._jitter(x, rng))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
        else:
            step = cfg.steps
        self.steps_done = step
        self.final_losses = {k: float(v.detach()) for k, v in out.items()}
        self.eval()
        fit_quantiles(self, validation, seed=cfg.seed)
        self.train_seconds = time.time() - t0
        return self

    def set_quantiles(self, qa_st: float, qb_st: float, qa_ae: float, qb_ae: float) -> None:
        """Store the ST and AE map quantiles (fitted by :func:`dhkd.models.calibration.fit_quantiles` on the
        validation good images); qa < qb for both."""
        normalisation_weights((qa_st, qb_st, qa_ae, qb_ae))  # validates them
        self.quantiles.copy_(torch.tensor([qa_st, qb_st, qa_ae, qb_ae], dtype=self.quantiles.dtype))
