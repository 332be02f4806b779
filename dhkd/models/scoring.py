"""The one scoring function: a normalised map at feature resolution -> the anomaly map at the image's size and
the image score.

The model's evaluation forward, the evaluator, ``dhkd predict`` and every exported detector (ONNX,
``torch.export``) go through :func:`map_and_score`, so the same image gives the same map and score in all of
them: the map is resized once, bilinearly (half-pixel centres, no corner alignment, fp32), from feature
resolution straight to the requested size, and the score is the maximum of that map.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_map(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(b, 1, h, w) map -> (b, 1, H, W) in fp32, bilinear with half-pixel centres (``align_corners=False``)."""
    return F.interpolate(fmap.float(), size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def image_score(amap: torch.Tensor) -> torch.Tensor:
    """The image score of each map of a (b, 1, H, W) batch: its maximum, shape (b,)."""
    return amap.flatten(1).amax(1)


def map_and_score(fmap: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(anomaly map (b, 1, H, W) at ``size``, score (b,)) of a normalised feature-resolution map (b, 1, h, w)."""
    amap = resize_map(fmap, size)
    return amap, image_score(amap)


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
