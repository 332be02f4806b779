"""Heat-map overlays (jet colour map blended on the image, ground-truth contour) with Pillow and numpy only."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map (blue -> cyan -> yellow -> red) of values in [0, 1], as uint8 RGB."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where R, G, B peak
    rgb = np.clip(1.5 - np.abs(4.0 * (x - centres)), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def colour_scale(maps: Sequence[np.ndarray], low_quantile: float = 0.5, sample_per_map: int = 4096,
                 seed: int = 0) -> tuple[float, float]:
    """One (vmin, vmax) for a whole test set: vmin = the median of pooled pixels (typical normal level),
    vmax = the largest image score. Good images then stay cool instead of being stretched to full red."""
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([rng.choice(m.ravel(), size=min(sample_per_map, m.size), replace=False)
                             for m in maps])
    vmin, vmax = float(np.quantile(pooled, low_quantile)), float(max(float(m.max()) for m in maps))
    return vmin, (vmax if vmax > vmin else vmin + 1e-6)


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend jet((amap - vmin) / (vmax - vmin)) onto the uint8 RGB image; draw the mask outline in white."""
    if image.shape[:2] != amap.shape:
        raise ValueError(f"image {image.shape[:2]} and map {amap.shape} differ in size")
    heat = jet((amap - vmin) / (vmax - vmin)).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    if mask is not None and mask.any():
        mask = mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask)
        width = max(1, round(max(mask.shape) / 300))
        edge = ndimage.binary_dilation(edge, iterations=width) if width > 1 else edge
        out[edge] = 255.0
    return np.round(out).astype(np.uint8)


def save_overlay(path: Path, image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float,
                 mask: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, amap, vmin, vmax, mask)).save(path)
