"""A training-free baseline: nearest-neighbour distance of patch features to a memory bank of good patches.

Features: the patch descriptors of the distillation backbone ``backbone`` (:mod:`dhkd.teacher.backbones`;
EfficientNet-Lite0 by default, or Lite1/Lite2: the last stride-8 and stride-16 blocks, each 3×3-aggregated and
channel-pooled to 192 values, on the stride-8 grid) of the image at ``image_size``² (32×32 descriptors of 384
values at 256²). Memory bank: ``bank_size`` descriptors drawn uniformly at random (seeded) from all training
images' descriptors. Map: the Euclidean distance of each test descriptor to its nearest bank descriptor, at
feature resolution; the evaluator resizes it to the image.
With ``teacher`` set, the descriptors are a PDN teacher's outputs instead (64×64×384 at 256²): the same
scorer then measures how much a distilled teacher keeps of what the backbone can tell apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.common import IMAGENET_MEAN, IMAGENET_STD
from ..teacher.backbones import build_backbone


@dataclass
class KNNConfig:
    """Settings of :class:`KNNScorer`."""
    backbone: str = "efficientnet-lite0"
    teacher: str = ""            # a PDN teacher file: use its (padded) output as descriptors instead of the backbone
    teacher_size: str = "small"  # that teacher's PDN size
    image_size: int = 256
    bank_size: int = 20000
    seed: int = 0
    batch_size: int = 8
    query_chunk: int = 4096


class KNNScorer(nn.Module):
    """``fit(dataset)`` builds the memory bank from good training images; ``anomaly_map(images)`` returns
    (b, 1, h, w) nearest-neighbour distances for an ImageNet-normalised batch."""

    def __init__(self, config: KNNConfig | None = None, backbone_weights=None):
        super().__init__()
        self.config = config or KNNConfig()
        if self.config.bank_size < 1:
            raise ValueError(f"bank_size must be positive, got {self.config.bank_size}")
        if self.config.teacher:
            from ..persistence import load_teacher

            self.backbone = load_teacher(self.config.teacher, size=self.config.teacher_size, padding=True)
        else:
            self.backbone = build_backbone(self.config.backbone, backbone_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bank", torch.zeros(0, 0))

    @property
    def image_size(self) -> int:
        """The square input side the features are computed at."""
        return self.config.image_size

    @torch.no_grad()
    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) patch descriptors of an ImageNet-normalised batch."""
        if self.config.teacher:
            return self.backbone(images)  # a PDN takes the ImageNet-normalised image
        return self.backbone(images * self.std + self.mean)

    @torch.no_grad()
    def fit(self, dataset) -> "KNNScorer":
        """Fill the memory bank from the good images of ``dataset`` (a training split of :mod:`dhkd.data`).

        The bank is ``bank_size`` descriptors drawn without replacement from all good images' descriptors; they
        are picked while the images stream through, so memory holds the bank, never every descriptor (4.4 M of
        384 values for a PDN teacher on ELPV's 1,085 training cells).
        """
        n_good = sum(s.label == 0 for s in dataset.samples)
        if n_good == 0:
            raise ValueError(f"{dataset!r} has no good image to build the memory bank from")
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False,
                                             collate_fn=list)
        rng = np.random.default_rng(self.config.seed)
        slot, seen = None, 0  # slot[i]: bank row of descriptor i, or -1 if not drawn
        for batch in loader:
            good = [it["image"] for it in batch if it["label"] == 0]
            if not good:
                continue
            f = self.descriptors(torch.stack(good))
            rows = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            if slot is None:  # every image has the same descriptor grid: the total is known now
                total = n_good * f.shape[-2] * f.shape[-1]
                if total > self.config.bank_size:
                    slot = np.full(total, -1, dtype=np.int64)
                    slot[rng.choice(total, self.config.bank_size, replace=False)] = np.arange(self.config.bank_size)
                    self.bank = rows.new_empty(self.config.bank_size, rows.shape[1])
                else:
                    slot = np.arange(total)
                    self.bank = rows.new_empty(total, rows.shape[1])
            at = torch.from_numpy(slot[seen:seen + rows.shape[0]])
            keep = at >= 0
            self.bank[at[keep]] = rows[keep]
            seen += rows.shape[0]
        if seen != slot.shape[0]:
            raise RuntimeError(f"{dataset!r}: {seen} descriptors from its good images, expected {slot.shape[0]}")
        return self

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """Distance of each patch descriptor to its nearest memory-bank descriptor, (b, 1, h, w)."""
        if self.bank.numel() == 0:
            raise RuntimeError("the kNN memory bank is empty: call fit() on training images first")
        f = self.descriptors(images)
        b, c, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, c)
        bank_sq = (self.bank ** 2).sum(1)
        out = []
        for chunk in q.split(self.config.query_chunk):
            nearest = (bank_sq - 2 * chunk @ self.bank.T).argmin(1)  # |q|² is the same for every bank entry
            out.append((chunk - self.bank[nearest]).norm(dim=1))      # exact distance to the nearest one
        return torch.cat(out).reshape(b, 1, h, w)
