"""Exact, tie-aware AUROC (the Mann-Whitney statistic, equal to sklearn's roc_auc_score) for image scores and
for pixels pooled over many full-resolution maps, plus the MVTec LOCO script's classification ROC with its tie
rule."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

_CHUNK = 1 << 22


def _as_list(arrays) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    return [np.asarray(a).ravel() for a in arrays]


def auroc_from_groups(positives: Iterable[np.ndarray], negatives: Iterable[np.ndarray]) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) over all pairs, exactly.

    Only the smaller class is concatenated and sorted; the larger one is streamed in chunks through
    ``searchsorted``, so pooled pixels of hundreds of megapixel maps need little extra memory.
    """
    pos, neg = _as_list(positives), _as_list(negatives)
    n_pos, n_neg = sum(a.size for a in pos), sum(a.size for a in neg)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative scores")
    for a in pos + neg:
        if a.size and not np.isfinite(a).all():
            raise ValueError("AUROC scores contain NaN or infinity")
    small_is_pos = n_pos <= n_neg
    small, large = (pos, neg) if small_is_pos else (neg, pos)
    dtype = np.result_type(*[a.dtype for a in small + large])
    ref = np.sort(np.concatenate(small).astype(dtype, copy=False))
    greater = equal = 0  # pairs with pos > neg, pos == neg
    for arr in large:
        for start in range(0, arr.size, _CHUNK):
            chunk = arr[start:start + _CHUNK].astype(dtype, copy=False)
            left = np.searchsorted(ref, chunk, side="left")
            right = left.copy()  # ties are rare with continuous scores: search again only for those
            tied = ref[np.minimum(left, ref.size - 1)] == chunk
            right[tied] = np.searchsorted(ref, chunk[tied], side="right")
            equal += int((right - left).sum(dtype=np.int64))
            if small_is_pos:  # chunk holds negatives: positives above each
                greater += int((ref.size - right).sum(dtype=np.int64))
            else:  # chunk holds positives: negatives below each
                greater += int(left.sum(dtype=np.int64))
    return (greater + 0.5 * equal) / (n_pos * n_neg)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Image AUROC: labels 1 = anomalous (positive), 0 = good."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    labels = labels.astype(bool)
    return auroc_from_groups(scores[labels], scores[~labels])


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Pixel AUROC over all pixels of all maps; ``masks`` are the matching boolean ground truths."""
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    pos, neg = [], []
    for i, (m, g) in enumerate(zip(maps, masks)):
        if m.shape != g.shape:
            raise ValueError(f"map {i} has shape {m.shape} but its mask has {g.shape}")
        g = g.astype(bool, copy=False)
        pos.append(m[g])
        neg.append(m[~g])
    return auroc_from_groups(pos, neg)


def loco_classification_auroc(good_scores: Sequence[float], anomalous_scores: Sequence[float]) -> float:
    """AUROC as the MVTec LOCO script computes it, tie rule included.

    Samples are sorted by score (stable, good ones first) and removed one by one from the "predicted
    anomalous" set, starting at (FPR, TPR) = (1, 1). A curve point is recorded after removing the FIRST sample
    of each new score value rather than the whole tied group, and the curve is closed at (0, 0); the area is
    the trapezoid rule. Without ties this equals the standard AUROC; with ties it is biased upward
    (good=[1, 1], bad=[1, 1] gives 0.75; good=[1], bad=[1] gives 1.0).
    """
    good, bad = np.asarray(good_scores, dtype=np.float64), np.asarray(anomalous_scores, dtype=np.float64)
    if good.size == 0 or bad.size == 0:
        raise ValueError(f"AUROC needs both classes; got {good.size} good and {bad.size} anomalous scores")
    scores = np.concatenate([good, bad])
    is_bad = np.concatenate([np.zeros(good.size, bool), np.ones(bad.size, bool)])
    order = np.argsort(scores, kind="stable")
    scores, is_bad = scores[order], is_bad[order]
    fp_left = good.size - np.cumsum(~is_bad)
    tp_left = bad.size - np.cumsum(is_bad)
    first_of_value = np.ones(scores.size, bool)
    first_of_value[1:] = scores[1:] != scores[:-1]
    fpr = np.concatenate([[1.0], fp_left[first_of_value] / good.size, [0.0]])[::-1]
    tpr = np.concatenate([[1.0], tp_left[first_of_value] / bad.size, [0.0]])[::-1]
    return float(np.sum(0.5 * (tpr[1:] + tpr[:-1]) * (fpr[1:] - fpr[:-1])))
