"""AU-sPRO and the image AUROC of MVTec LOCO AD, following MVTec's official LOCO evaluation
(docs/method.md, Evaluation metrics; reimplemented, not copied).

Per defect channel (one ground-truth PNG, never split into components) at threshold t:
  sPRO = min(|(map > t) and channel| / saturation_area, 1)   (strictly greater),
  saturation_area = floor(threshold * area) if relative else min(threshold, area) (defects_config.json).
FPR(t) is pooled over all images of a subset, counting only pixels outside every channel of their image.
Mean sPRO is the mean over all channels of all anomalous images of the subset.
Thresholds: 50 descending initial values (max + 1e-6, 48 equal-count positions of the sorted pooled scores,
min - 1e-6; above 1e7 pooled scores, floor(1e7 / #images) are drawn per image without replacement), then up to
10 refinement rounds on the curve of all test images: neighbouring points farther apart than 0.01
(Euclidean in (sPRO, FPR)) get new thresholds (the 100 largest gaps; 1 + a share of max(20 - #gaps, 0)
extra ones per gap, in proportion to gap length; linspace interiors). Areas: trapezoids up to each limit with
linear interpolation there, divided by the limit. Subsets: each anomaly type plus all good images; "mean" is
their average.

Deliberate differences from the official script, all documented in the results:
  * the subsampling for the initial thresholds is seeded (the official one is not);
  * a saturation area of 0 (relative threshold on a tiny defect) counts as 1 pixel instead of dividing by 0;
  * max + 1e-6 and min - 1e-6 are computed in float64 (the official script may round them to float32);
  * counts at each threshold come from sorted scores and binary search instead of thresholding every map;
    they are identical because float32 scores are compared with the threshold exactly (as float64).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .auroc import auroc, loco_classification_auroc
from .curve import area_up_to

MAX_FPRS = (0.01, 0.05, 0.1, 0.3, 1.0)
GOOD = "good"


def _float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= t, elementwise: for float32 x, x > t exactly iff x > _float32_floor(t)."""
    t = np.asarray(t, dtype=np.float64)
    f = t.astype(np.float32)
    above = f.astype(np.float64) > t
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


def count_greater(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Number of entries of the ascending array ``sorted_values`` strictly greater than each threshold."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if sorted_values.dtype == np.float32:
        thresholds = _float32_floor(thresholds)
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="right")


@dataclass
class _Channel:
    scores: np.ndarray        # sorted map values inside the channel
    saturation_area: int
    group: str                # the image's defect folder (subset)
    area: int
    threshold_above_area: bool


@dataclass
class LocoGroundTruth:
    """The ground truth of one test image: ``channels`` (K, H, W) with each channel's pixel value kept, or
    None for a good image; ``group`` is its test folder (good / logical_anomalies / structural_anomalies)."""
    group: str
    channels: np.ndarray | None = None


@dataclass
class SproCurveSet:
    """Everything needed to evaluate mean sPRO and FPR at any threshold, per subset."""
    channels: list[_Channel]
    defect_free: dict[str, np.ndarray]     # group -> sorted defect-free scores pooled over its images
    groups: list[str]                      # anomalous groups (subsets), in order
    min_score: float
    max_score: float
    sample: np.ndarray = field(repr=False)  # pooled scores for the initial thresholds (sorted)

    def values(self, thresholds: np.ndarray, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean sPRO, FPR) at each threshold, for one subset (``group`` + all good images) or for all
        images (``group`` None). Mean sPRO is NaN where the subset has no channel; FPR is NaN where it has
        no defect-free pixel."""
        thresholds = np.asarray(thresholds, dtype=np.float64)
        members = [GOOD, group] if group is not None else list(self.defect_free)
        chans = [c for c in self.channels if group is None or c.group == group]
        if chans:
            spro = np.zeros(thresholds.size)
            for c in chans:
                spro += np.minimum(count_greater(c.scores, thresholds) / max(c.saturation_area, 1), 1.0)
            spro /= len(chans)
        else:
            spro = np.full(thresholds.size, np.nan)
        arrays = [self.defect_free[g] for g in members if g in self.defect_free]
        n = sum(a.size for a in arrays)
        if n == 0:
            return spro, np.full(thresholds.size, np.nan)
        fp = sum(count_greater(a, thresholds) for a in arrays)
        return spro, fp / n


def build_curve_set(maps: Sequence[np.ndarray], truths: Sequence[LocoGroundTruth], defects_config: dict,
                    seed: int = 0, max_sampled_scores: int = 10_000_000) -> SproCurveSet:
    """Validate inputs and precompute sorted scores per channel and per subset.

    ``defects_config`` maps pixel value -> object with ``saturation_area(area)``, ``relative_saturation``,
    ``saturation_threshold`` (see :class:`dhkd.data.mvtec_loco.DefectConfig`).
    """
    if len(maps) != len(truths):
        raise ValueError(f"{len(maps)} maps but {len(truths)} ground truths")
    if not maps:
        raise ValueError("no anomaly maps")
    channels: list[_Channel] = []
    defect_free: dict[str, list[np.ndarray]] = {}
    groups: list[str] = []
    lo, hi = np.inf, -np.inf
    total = sum(np.asarray(m).size for m in maps)
    per_image = None if total <= max_sampled_scores else int(np.floor(max_sampled_scores / len(maps)))
    rng = np.random.default_rng(seed)
    sample = []
    for i, (m, gt) in enumerate(zip(maps, truths)):
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"map {i} must be 2-D, got shape {m.shape}")
        if m.dtype not in (np.float32, np.float64):
            m = m.astype(np.float32)
        if not np.isfinite(m).all():
            raise ValueError(f"map {i} contains NaN or infinity")
        lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
        flat = m.ravel()
        sample.append(flat if per_image is None or per_image >= flat.size
                      else rng.choice(flat, size=per_image, replace=False))
        if gt.channels is None:
            if gt.group != GOOD:
                raise ValueError(f"image {i} in group {gt.group!r} has no ground truth (only good images may)")
            defect_free.setdefault(GOOD, []).append(flat)
            continue
        if gt.group == GOOD:
            raise ValueError(f"image {i} is in the good group but has ground-truth channels")
        ch = np.asarray(gt.channels)
        if ch.ndim != 3 or ch.shape[1:] != m.shape:
            raise ValueError(f"image {i}: ground truth of shape {ch.shape} does not match its map {m.shape}")
        if gt.group not in groups:
            groups.append(gt.group)
        union = np.zeros(m.shape, bool)
        for k, c in enumerate(ch):
            inside = c > 0
            values = np.unique(c[inside])
            if values.size != 1:
                raise ValueError(f"image {i} channel {k}: expected exactly one positive pixel value, "
                                 f"found {values.tolist()}")
            value = int(values[0])
            if value not in defects_config:
                raise ValueError(f"image {i} channel {k}: pixel value {value} is not in defects_config "
                                 f"(known: {sorted(defects_config)})")
            cfg = defects_config[value]
            area = int(inside.sum())
            channels.append(_Channel(np.sort(m[inside]), cfg.saturation_area(area), gt.group, area,
                                     (not cfg.relative_saturation) and cfg.saturation_threshold > area))
            union |= inside
        defect_free.setdefault(gt.group, []).append(m[~union])
    if not channels:
        raise ValueError("AU-sPRO needs at least one anomalous image")
    pooled = {g: np.sort(np.concatenate(v)) for g, v in defect_free.items()}
    return SproCurveSet(channels, pooled, groups, lo, hi, np.sort(np.concatenate(sample)))


def initial_thresholds(curves: SproCurveSet, num: int = 50, epsilon: float = 1e-6) -> list[float]:
    """max + eps, num - 2 equal-count positions of the sorted (sub)sampled scores, min - eps; descending."""
    idx = np.linspace(0, curves.sample.size - 1, num=num, endpoint=True, dtype=int)[1:-1]
    middle = curves.sample[idx].astype(np.float64).tolist()[::-1]
    return [curves.max_score + epsilon] + middle + [curves.min_score - epsilon]


def refine_thresholds(queries: list[float], values: np.ndarray,
                      get_values: Callable[[list[float]], np.ndarray], max_distance: float = 0.01,
                      min_queries_per_step: int = 20, max_queries_per_step: int = 100, max_steps: int = 10
                      ) -> tuple[list[float], np.ndarray, int]:
    """Insert thresholds where neighbouring curve points are more than ``max_distance`` apart.

    ``queries`` are sorted (descending here); ``values`` holds one point per query. Each step takes the
    ``max_queries_per_step`` largest gaps and gives each 1 + round(share) new queries, the shares splitting
    max(min_queries_per_step - #gaps, 0) in proportion to gap length (allocated gap by gap, largest first).
    Returns the merged queries, their values and the number of steps taken.
    """
    queries = list(queries)
    values = np.asarray(values, dtype=np.float64)
    descending = len(queries) < 2 or queries[0] > queries[-1]
    for step in range(max_steps):
        dist = np.linalg.norm(np.diff(values, axis=0), axis=1)
        gaps = [(float(d), (queries[i], queries[i + 1])) for i, d in enumerate(dist) if d > max_distance]
        if not gaps:
            return queries, values, step
        gaps = sorted(gaps, key=lambda g: g[0], reverse=True)[:max_queries_per_step]
        remaining = max(min_queries_per_step - len(gaps), 0)
        total = sum(d for d, _ in gaps)
        new: list[float] = []
        for d, (left, right) in gaps:
            extra = int(np.round(d / total * remaining))
            new.extend(np.linspace(left, right, num=3 + extra)[1:-1].tolist())
            remaining -= extra
            total -= d
        all_q = np.array(queries + new)
        all_v = np.concatenate([values, np.asarray(get_values(new), dtype=np.float64)])
        order = np.argsort(all_q, kind="stable")
        if descending:
            order = order[::-1]
        queries, values = all_q[order].tolist(), all_v[order]
    return queries, values, max_steps


def loco_metrics(maps: Sequence[np.ndarray], truths: Sequence[LocoGroundTruth], defects_config: dict,
                 max_fprs: Sequence[float] = MAX_FPRS, max_distance: float = 0.01, seed: int = 0,
                 image_scores: Sequence[float] | None = None) -> dict:
    """AU-sPRO per subset and limit, their mean, and image AUROC per subset (standard tie-aware and with the
    official script's tie rule). Image scores default to the maximum of each map."""
    curves = build_curve_set(maps, truths, defects_config, seed)

    def all_images(qs):
        spro, fpr = curves.values(np.asarray(qs))
        return np.stack([spro, fpr], axis=1)

    init = initial_thresholds(curves)
    thresholds, values, steps = refine_thresholds(init, all_images(init), all_images, max_distance)
    thresholds = np.asarray(thresholds)
    subsets = {}
    for g in curves.groups:
        spro, fpr = curves.values(thresholds, g)
        if np.isnan(fpr).any():
            subsets[g] = {str(lim): None for lim in max_fprs}  # no defect-free pixel: FPR undefined
        else:
            subsets[g] = {str(lim): area_up_to(fpr, spro, lim) for lim in max_fprs}
    au_spro = dict(subsets)
    au_spro["mean"] = {str(lim): _mean([subsets[g][str(lim)] for g in curves.groups]) for lim in max_fprs}

    scores = np.array([float(np.max(m)) for m in maps] if image_scores is None else image_scores, dtype=np.float64)
    group_of = np.array([t.group for t in truths])
    good = scores[group_of == GOOD]
    standard, official = {}, {}
    for g in curves.groups:
        bad = scores[group_of == g]
        if good.size and bad.size:
            standard[g] = auroc(np.concatenate([good, bad]), np.r_[np.zeros(good.size), np.ones(bad.size)])
            official[g] = loco_classification_auroc(good, bad)
        else:
            standard[g] = official[g] = None
    standard["mean"] = _mean([standard[g] for g in curves.groups])
    official["mean"] = _mean([official[g] for g in curves.groups])
    spro_all, fpr_all = values[:, 0], values[:, 1]
    return {
        "au_spro": au_spro,
        "image_auroc": standard,
        "image_auroc_loco_tie_rule": official,
        "curve": {"thresholds": thresholds.tolist(), "mean_spro": spro_all.tolist(), "fpr": fpr_all.tolist()},
        "num_thresholds": int(thresholds.size),
        "refinement_steps": steps,
        "num_channels": len(curves.channels),
        "channels_with_saturation_above_area": sum(c.threshold_above_area for c in curves.channels),
        "channels_with_zero_saturation_area": sum(c.saturation_area == 0 for c in curves.channels),
        "subsampled_initial_scores": int(curves.sample.size),
    }


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))
