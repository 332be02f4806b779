"""AU-PRO (MVTec AD): per-region overlap against the pooled false-positive rate, exact from a global sort.

Regions are the 8-connected components of each ground-truth mask. At a threshold t (pixels with score >= t are
positive) a region's overlap is the fraction of its pixels that are positive, PRO is the mean over all regions
of all images, and the FPR is pooled over all defect-free pixels of all images. The curve has one point per
distinct score, starts at (0, 0), and its area is integrated up to the FPR limit (linear interpolation there)
and divided by the limit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .curve import area_up_to

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) points in increasing order, from (0, 0) up to the first point with FPR >= ``max_fpr``.

    Memory: only defect-free pixels scoring at or above the FPR = ``max_fpr`` cut and region pixels above
    that cut are sorted (about max_fpr of all pixels).
    """
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    region_scores, region_ids, region_sizes, bg = [], [], [], []
    n_regions = 0
    for i, (m, g) in enumerate(zip(maps, masks)):
        m = np.asarray(m)
        if m.shape != g.shape or m.ndim != 2:
            raise ValueError(f"map {i} has shape {m.shape} but its mask has {g.shape} (both must be 2-D)")
        if not np.isfinite(m).all():
            raise ValueError(f"map {i} contains NaN or infinity")
        g = np.asarray(g).astype(bool, copy=False)
        bg.append(m[~g])
        if g.any():
            labels, n = ndimage.label(g, structure=EIGHT_CONNECTED)
            inside = labels > 0
            region_scores.append(m[inside])
            region_ids.append(labels[inside].astype(np.int64) - 1 + n_regions)
            region_sizes.append(np.bincount(labels[inside] - 1, minlength=n))
            n_regions += n
    if n_regions == 0:
        raise ValueError("AU-PRO needs at least one anomalous region; all masks are empty")
    bg = np.concatenate(bg)
    n_bg = bg.size
    if n_bg == 0:
        raise ValueError("AU-PRO needs defect-free pixels; every pixel is inside a defect")
    # Scores below the k-th largest defect-free score only matter at FPR > max_fpr.
    k = min(n_bg, int(np.floor(max_fpr * n_bg)) + 1)
    cut = np.partition(bg, n_bg - k)[n_bg - k]
    bg = bg[bg >= cut]
    region_scores = np.concatenate(region_scores)
    weights = 1.0 / (np.concatenate(region_sizes).astype(np.float64) * n_regions)
    region_w = weights[np.concatenate(region_ids)]
    keep = region_scores >= cut
    dtype = np.result_type(bg.dtype, region_scores.dtype)
    scores = np.concatenate([bg.astype(dtype, copy=False), region_scores[keep].astype(dtype, copy=False)])
    is_bg = np.concatenate([np.ones(bg.size, bool), np.zeros(int(keep.sum()), bool)])
    w = np.concatenate([np.zeros(bg.size), region_w[keep]])
    del bg, region_scores
    order = np.argsort(scores, kind="stable")[::-1]
    scores, is_bg, w = scores[order], is_bg[order], w[order]
    last_of_value = np.ones(scores.size, bool)
    last_of_value[:-1] = scores[:-1] != scores[1:]
    fpr = np.cumsum(is_bg)[last_of_value] / n_bg
    pro = np.cumsum(w)[last_of_value]
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def au_pro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (1.0 = perfect)."""
    fpr, pro = pro_curve(maps, masks, max_fpr)
    return area_up_to(fpr, pro, max_fpr)
