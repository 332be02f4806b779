"""Heat-map overlays (jet colour map blended on the image, ground-truth contour) with Pillow and numpy only.

Two kinds: :func:`overlay` with one given colour scale (e.g. :func:`colour_scale` of a whole test set), and
:func:`threshold_overlay` with the image's own scale, the region above a decision threshold outlined and a
colour bar below the image marking where the threshold and the image's score fall.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
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


def _outline(region: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean region, about 1/300 of the image side wide."""
    edge = region & ~ndimage.binary_erosion(region)
    width = max(1, round(max(region.shape) / 300))
    return ndimage.binary_dilation(edge, iterations=width) if width > 1 else edge


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend jet((amap - vmin) / (vmax - vmin)) onto the uint8 RGB image; draw the mask outline in white."""
    if image.shape[:2] != amap.shape:
        raise ValueError(f"image {image.shape[:2]} and map {amap.shape} differ in size")
    heat = jet((amap - vmin) / (vmax - vmin)).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    if mask is not None and mask.any():
        out[_outline(mask.astype(bool))] = 255.0
    return np.round(out).astype(np.uint8)


THRESHOLD_COLOUR = (255, 0, 255)  # magenta: the outline of the region above the threshold and its bar mark


def threshold_overlay(image: np.ndarray, amap: np.ndarray, threshold: float, mask: np.ndarray | None = None
                      ) -> np.ndarray:
    """An overlay on the image's own colour scale, with the decision threshold marked.

    The scale runs from the map's median (the image's typical level) to ``max(map max, threshold)``, so a
    good image whose score stays below the threshold is not stretched to full red, and every defective
    image shows its own structure. Pixels above ``threshold`` are outlined in magenta, the ground truth
    (``mask``) in white. Below the image: a colour bar of the scale with a magenta mark at the threshold
    and a white mark at the image's score, and one line of text: the verdict, the score and the threshold.
    """
    vmin = float(np.median(amap))
    vmax = max(float(amap.max()), float(threshold))
    vmax = vmax if vmax > vmin else vmin + 1e-6
    out = overlay(image, amap, vmin, vmax, mask)
    above = amap >= threshold
    if above.any():
        out[_outline(above)] = THRESHOLD_COLOUR
    w = out.shape[1]
    bar_h = max(6, out.shape[0] // 24)
    bar = np.repeat(jet(np.linspace(0.0, 1.0, w))[None], bar_h, axis=0)

    def mark(value: float, colour) -> None:
        x = int(round((value - vmin) / (vmax - vmin) * (w - 1)))
        bar[:, max(0, x - 1):min(w, x + 2)] = colour
    mark(threshold, THRESHOLD_COLOUR)
    mark(float(amap.max()), (255, 255, 255))
    text = Image.new("RGB", (w, 12), (0, 0, 0))
    verdict = "ANOMALY" if amap.max() >= threshold else "ok"
    ImageDraw.Draw(text).text((2, 0), f"{verdict} {amap.max():.3g}/{threshold:.3g}", fill=(255, 255, 255))
    return np.concatenate([out, bar, np.asarray(text)], axis=0)


def save_overlay(path: Path, image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float,
                 mask: np.ndarray | None = None) -> None:
    """Write :func:`overlay` as a PNG (folders created)."""
    save_png(path, overlay(image, amap, vmin, vmax, mask))


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write a uint8 RGB array as a PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
