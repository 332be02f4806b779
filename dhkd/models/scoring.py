"""The one scoring function: a normalised map at feature resolution -> the anomaly map at the image's size and
the image score.

The model's evaluation forward, the evaluator, ``dhkd predict`` and every exported detector (ONNX,
``torch.export``) go through :func:`map_and_score`, so the same image gives the same map and score in all of
them: the map is resized once, bilinearly (half-pixel centres, no corner alignment, fp32), from feature
resolution straight to the requested size, and the score is the maximum of that map, or with
``DHKDConfig.image_score_top`` = P > 0 the mean of its largest P % of values (:func:`image_score`).

Two opt-in steps of the CPU recipe (``DHKDConfig.cell_norm`` / ``map_sigma``) run before the resize, at feature
resolution and in this order: a per-cell z-score with statistics of the good validation maps
(:func:`cell_normalise`), then a Gaussian of ``sigma`` feature cells (:func:`smooth_map`, separable, with
scipy's default "reflect" borders). Both are plain tensor operations, so they export with the rest.

An image cut into several S×S windows (``DHKDConfig.input_mode`` "pad" or "tile") is scored as one: the
windows' maps are stitched into the image before the resize and the score (``plan`` of :func:`map_and_score`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.windows import WindowPlan


def resize_map(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(b, 1, h, w) map -> (b, 1, H, W) in fp32, bilinear with half-pixel centres (``align_corners=False``)."""
    return F.interpolate(fmap.float(), size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def check_image_score_top(top_percent: float) -> None:
    """Raise unless ``top_percent`` (the share of a map's values whose mean is the image score, in %; 0 = the
    maximum) is a number in [0, 100]."""
    if isinstance(top_percent, bool) or not isinstance(top_percent, (int, float)) or not 0 <= top_percent <= 100:
        raise ValueError(f"image_score_top is a percentage of the map's values in [0, 100] (0 = the map's "
                         f"maximum), got {top_percent!r}")


def top_count(num_values: int, top_percent: float) -> int:
    """How many of a map's ``num_values`` values the top-``top_percent`` % mean takes: round(P/100 · n), at
    least one."""
    return max(1, int(round(top_percent / 100 * num_values)))


def image_score(amap: torch.Tensor, top_percent: float = 0.0) -> torch.Tensor:
    """The image score of each map of a (b, 1, H, W) batch, shape (b,): its maximum (``top_percent`` = 0), or
    the mean of its largest ``top_percent`` % of values (:func:`top_count` of them), which a single hot pixel
    moves less than the maximum."""
    check_image_score_top(top_percent)
    flat = amap.flatten(1)
    if top_percent == 0:
        return flat.amax(1)
    return flat.topk(top_count(flat.shape[1], top_percent), dim=1).values.mean(1)


def gaussian_kernel(sigma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """The 1-D Gaussian of ``sigma`` (> 0) as scipy.ndimage.gaussian_filter builds it: radius
    int(4·sigma + 0.5), weights exp(−x²/2σ²) summing to 1, computed in float64, returned in fp32. Built on
    ``device`` itself (no host-to-device copy, so it can run inside a CUDA graph capture)."""
    if not sigma > 0:
        raise ValueError(f"the Gaussian sigma must be > 0, got {sigma}")
    radius = int(4.0 * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).float()


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices into a length-``n`` axis padded by ``radius`` on each side with scipy's "reflect" rule
    (d c b a | a b c d | d c b a: the edge value repeated), for any radius."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def smooth_map(fmap: torch.Tensor, sigma: float) -> torch.Tensor:
    """(b, 1, h, w) map smoothed with a Gaussian of ``sigma`` cells (separable, reflect borders as
    scipy.ndimage.gaussian_filter's default); ``sigma`` = 0 returns the map unchanged."""
    if sigma == 0:
        return fmap
    k = gaussian_kernel(sigma, fmap.device)
    r = (k.numel() - 1) // 2
    h, w = fmap.shape[-2:]
    out = fmap.float().index_select(-1, _reflect_index(w, r, fmap.device))
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = out.index_select(-2, _reflect_index(h, r, fmap.device))
    return F.conv2d(out, k.view(1, 1, -1, 1))


def cell_normalise(fmap: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(fmap − mean) / std per cell; the (1, 1, h0, w0) statistics are resized bilinearly (as
    :func:`resize_map`) when the map (b, 1, h, w) has another size."""
    if tuple(mean.shape[-2:]) != tuple(fmap.shape[-2:]):
        mean, std = resize_map(mean, fmap.shape[-2:]), resize_map(std, fmap.shape[-2:])
    return (fmap.float() - mean) / std


def stitch_windows(maps: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """The (1, 1, h, w) map of an image's frame (``plan.frame``) from the (n, 1, S, S) maps of its windows:
    each window's part inside the frame, overlaps averaged (written with padding, not in-place writes, so it
    traces and exports)."""
    (h, w), s = plan.frame, plan.side
    total, count = None, torch.zeros(1, 1, h, w, device=maps.device)
    for m, (y, x) in zip(maps, plan.offsets):
        top, left, bottom, right = max(0, y), max(0, x), min(h, y + s), min(w, x + s)
        pad = (left, w - right, top, h - bottom)
        part = F.pad(m[None, :, top - y:bottom - y, left - x:right - x].float(), pad)
        total = part if total is None else total + part
        count = count + F.pad(torch.ones(1, 1, bottom - top, right - left, device=maps.device), pad)
    return total / count


def map_and_score(fmap: torch.Tensor, size: tuple[int, int], *,
                  cell_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                  sigma: float = 0.0, top_percent: float = 0.0,
                  plan: WindowPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anomaly map (b, 1, H, W) at ``size``, score (b,)) of a normalised feature-resolution map (b, 1, h, w):
    per-cell z-score with ``cell_stats`` = (mean, std) when given, then a Gaussian of ``sigma`` cells when
    > 0, then the resize and the image score (:func:`image_score` with ``top_percent``). Without both options
    the map is only resized.

    With a ``plan`` that cuts the image into windows (:mod:`dhkd.data.windows`) the batch holds the windows
    of ONE image: each window's map is resized to S×S, they are stitched into the image's frame
    (:func:`stitch_windows`), and that is resized to ``size``; the result is (1, 1, H, W) and (1,)."""
    if cell_stats is not None:
        fmap = cell_normalise(fmap, *cell_stats)
    fmap = smooth_map(fmap, sigma)
    if plan is not None and not plan.whole:
        if fmap.shape[0] != plan.count:
            raise ValueError(f"the plan has {plan.count} windows, the batch {fmap.shape[0]} maps")
        fmap = stitch_windows(resize_map(fmap, (plan.side, plan.side)), plan)
    amap = resize_map(fmap, size)
    return amap, image_score(amap, top_percent)


class NonFiniteMapError(ValueError):
    """An anomaly map holds NaN or infinite values (broken weights or a broken input)."""


def check_finite(amap: torch.Tensor | np.ndarray, image: str) -> None:
    """Raise :class:`NonFiniteMapError` naming ``image`` when its map has a NaN or infinite value: such a map
    has no meaningful score (a NaN score would compare as "not anomalous" against any threshold)."""
    values = amap.detach().cpu().numpy() if isinstance(amap, torch.Tensor) else np.asarray(amap)
    bad = int(values.size - np.isfinite(values).sum())
    if bad:
        raise NonFiniteMapError(f"the anomaly map of {image} has {bad} non-finite value(s) (NaN or inf) out of "
                                f"{values.size}: the model's weights or this image are broken, so it has no score")
