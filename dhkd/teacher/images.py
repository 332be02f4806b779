"""Image folders and the paired views (backbone view, PDN view) used to distil a teacher."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_MAX_IMAGES = 256  # folders up to this many images are decoded once and kept in memory


def find_images(root: str | Path) -> list[Path]:
    """All .jpg/.jpeg/.png/.bmp files under ``root`` (recursive, case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root}: not a directory")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"image folder {root}: no {'/'.join(IMAGE_SUFFIXES)} files found (searched recursively)")
    return paths


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


class PairedViews:
    """Draws random images from a list and returns the two views of each as float tensors in [0, 1].

    Per sample (all randomness from the given ``torch.Generator``, so a saved generator state resumes
    the exact same stream): pick an image uniformly; crop a random region covering a fraction
    ``crop_scale`` of its area with aspect ratio in [3/4, 4/3] (``(1, 1)`` = the whole image, squashed
    to a square as EfficientAD's pretraining does); optionally flip it horizontally; with probability
    ``grayscale_p`` turn it to grayscale (the same for both views); resize it (bilinear) to
    ``backbone_size`` and to ``pdn_size``.
    """

    def __init__(self, paths: list[Path], pdn_size: int, backbone_size: int,
                 crop_scale: tuple[float, float] = (1.0, 1.0), hflip: bool = False, grayscale_p: float = 0.1):
        if not paths:
            raise ValueError("PairedViews needs at least one image path")
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if not 0 <= grayscale_p <= 1:
            raise ValueError(f"grayscale_p must be in [0, 1], got {grayscale_p}")
        self.paths, self.pdn_size, self.backbone_size = list(paths), pdn_size, backbone_size
        self.crop_scale, self.hflip, self.grayscale_p = (lo, hi), hflip, grayscale_p
        self._cache: dict[int, Image.Image] | None = {} if len(self.paths) <= CACHE_MAX_IMAGES else None

    def _open(self, index: int) -> Image.Image:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {path}: cannot be decoded ({e})") from e
        if self._cache is not None:
            self._cache[index] = im
        return im

    def _crop_box(self, w: int, h: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        area = w * h * _uniform(gen, *self.crop_scale)
        ratio = math.exp(_uniform(gen, math.log(3 / 4), math.log(4 / 3)))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        x0 = int(torch.randint(w - cw + 1, (), generator=gen))
        y0 = int(torch.randint(h - ch + 1, (), generator=gen))
        return x0, y0, x0 + cw, y0 + ch

    def sample(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One pair: (3×backbone_size², 3×pdn_size²), float32 in [0, 1]."""
        im = self._open(int(torch.randint(len(self.paths), (), generator=gen)))
        if self.crop_scale != (1.0, 1.0):
            im = im.crop(self._crop_box(*im.size, gen))
        if self.hflip and torch.rand((), generator=gen).item() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if torch.rand((), generator=gen).item() < self.grayscale_p:
            im = im.convert("L").convert("RGB")
        return tuple(torch.from_numpy(np.array(im.resize((s, s), Image.Resampling.BILINEAR)))
                     .permute(2, 0, 1).float().div_(255.0) for s in (self.backbone_size, self.pdn_size))

    def batch(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs stacked: (n×3×backbone_size², n×3×pdn_size²)."""
        pairs = [self.sample(gen) for _ in range(n)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
