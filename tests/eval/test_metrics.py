"""Metrics against independent implementations: sklearn for AUROC, brute-force PRO/sPRO written here."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dhkd.data.mvtec_loco import DefectConfig
from dhkd.eval.metrics import (LocoGroundTruth, area_up_to, au_pro, auroc, loco_classification_auroc,
                               loco_metrics, pixel_auroc, pro_curve)
from dhkd.eval.metrics.spro import build_curve_set, count_greater, initial_thresholds, refine_thresholds


# ----------------------------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", range(4))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 101).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, 101)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    cont = rng.normal(size=57)
    lab = rng.integers(0, 2, 57)
    assert auroc(cont, lab) == pytest.approx(roc_auc_score(lab, cont), abs=1e-12)


def test_pixel_auroc_matches_sklearn_both_class_orders():
    rng = np.random.default_rng(1)
    maps = [np.round(rng.random((9, 7)) * 4).astype(np.float32) for _ in range(3)]
    for fraction in (0.2, 0.8):  # positives the smaller, then the larger class
        masks = [rng.random((9, 7)) < fraction for _ in range(3)]
        ref = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
        assert pixel_auroc(maps, masks) == pytest.approx(ref, abs=1e-12)


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((2, 2))], [np.zeros((2, 3), bool)])


def test_loco_tie_rule_examples_and_agreement_without_ties():
    assert loco_classification_auroc([1, 1], [1, 1]) == pytest.approx(0.75)
    assert loco_classification_auroc([1], [1]) == pytest.approx(1.0)
    assert auroc([1, 1, 1, 1], [0, 0, 1, 1]) == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    good, bad = rng.normal(size=13), rng.normal(0.5, size=17)
    ref = roc_auc_score(np.r_[np.zeros(13), np.ones(17)], np.r_[good, bad])
    assert loco_classification_auroc(good, bad) == pytest.approx(ref, abs=1e-12)


# ------------------------------------------------------------------------------------------ curve area
def test_area_up_to_interpolates_at_the_limit():
    x, y = np.array([0.0, 0.2, 0.6, 1.0]), np.array([0.0, 0.4, 0.8, 1.0])
    # up to 0.4: triangle 0..0.2 (0.04) + trapezoid 0.2..0.4 with y 0.4 -> 0.6 (0.1)
    assert area_up_to(x, y, 0.4, normalize=False) == pytest.approx(0.14)
    assert area_up_to(x, y, 0.4) == pytest.approx(0.35)
    assert area_up_to(x, y, 0.2, normalize=False) == pytest.approx(0.04)  # limit on an existing point
    with pytest.raises(ValueError, match="outside"):
        area_up_to(x, y, 1.5)


# ---------------------------------------------------------------------------------- brute-force AU-PRO
def _components_8(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components by flood fill (independent of scipy)."""
    seen = np.zeros_like(mask, bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        region = np.zeros_like(mask, bool)
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            region[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append(region)
    return regions


def _brute_au_pro(maps, masks, limit):
    regions = [(i, r) for i, g in enumerate(masks) for r in _components_8(g)]
    n_bg = sum((~g).sum() for g in masks)
    values = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    xs, ys = [0.0], [0.0]
    for t in values:  # every distinct score: positive = score >= t
        xs.append(sum(((m >= t) & ~g).sum() for m, g in zip(maps, masks)) / n_bg)
        ys.append(np.mean([((maps[i] >= t) & r).sum() / r.sum() for i, r in regions]))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            if x0 < limit:
                y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += 0.5 * (y0 + y_lim) * (limit - x0)
            break
    return area / limit


def _pro_case(seed, diagonal=False):
    rng = np.random.default_rng(seed)
    maps = [np.round(rng.random((8, 9)) * 6).astype(np.float32) / 6 for _ in range(4)]  # ties
    masks = [np.zeros((8, 9), bool) for _ in range(4)]
    masks[0][1:3, 1:4] = True
    masks[0][5:7, 6:8] = True  # two regions in one image
    masks[1][4, 4] = masks[1][5, 5] = masks[1][6, 6] = True  # touching only diagonally: one region
    masks[1][0, 8] = True
    if diagonal:
        maps[1][4, 4] = 1.0
    # images 2 and 3 are good (all-zero masks)
    return maps, masks


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_au_pro_matches_brute_force(seed, limit):
    maps, masks = _pro_case(seed)
    assert au_pro(maps, masks, limit) == pytest.approx(_brute_au_pro(maps, masks, limit), abs=1e-12)


def test_au_pro_uses_8_connectivity():
    maps, masks = _pro_case(0, diagonal=True)
    assert len(_components_8(masks[1])) == 2
    assert au_pro(maps, masks, 0.3) == pytest.approx(_brute_au_pro(maps, masks, 0.3), abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    assert fpr[0] == pro[0] == 0 and fpr[-1] == pytest.approx(1) and pro[-1] == pytest.approx(1)


def test_au_pro_perfect_and_errors():
    g = np.zeros((6, 6), bool)
    g[2:4, 2:4] = True
    assert au_pro([g.astype(np.float32), np.zeros((6, 6), np.float32)], [g, np.zeros_like(g)]) == pytest.approx(1)
    with pytest.raises(ValueError, match="anomalous region"):
        au_pro([np.zeros((3, 3))], [np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="NaN"):
        au_pro([np.full((3, 3), np.nan)], [g[:3, :3]])


# ---------------------------------------------------------------------------------- brute-force sPRO
CONFIG = {
    255: DefectConfig("relative_half", 255, 0.5, True),
    200: DefectConfig("absolute_3", 200, 3, False),
    150: DefectConfig("absolute_large", 150, 1000, False),  # threshold larger than any area
    100: DefectConfig("relative_tiny", 100, 0.1, True),      # floor(0.1 * area) = 0 for areas < 10
}


def _saturation(value, area):
    cfg = CONFIG[value]
    sat = int(cfg.saturation_threshold * area) if cfg.relative_saturation else min(cfg.saturation_threshold, area)
    return max(sat, 1)  # documented guard for a zero saturation area


def _loco_case(seed, levels=6):
    """Six images 7x8: two good, two structural (several channels), two logical; scores on few levels."""
    rng = np.random.default_rng(seed)
    maps = [(rng.integers(0, levels, (7, 8)) / levels).astype(np.float32) for _ in range(6)]
    truths = [LocoGroundTruth("good"), LocoGroundTruth("good")]
    c = np.zeros((3, 7, 8), np.uint8)
    c[0, 1:3, 1:5] = 255
    c[1, 4:6, 0:2] = 200
    c[2, 0, 6:8] = 150
    truths.append(LocoGroundTruth("structural_anomalies", c))
    c = np.zeros((2, 7, 8), np.uint8)
    c[0, 2:6, 2:6] = 255
    c[1, 3:5, 3:5] = 100  # overlaps channel 0
    truths.append(LocoGroundTruth("structural_anomalies", c))
    c = np.zeros((1, 7, 8), np.uint8)
    c[0, :, 4:] = 200
    truths.append(LocoGroundTruth("logical_anomalies", c))
    c = np.zeros((2, 7, 8), np.uint8)
    c[0, 0:2, 0:2] = 100
    c[1, 5:7, 5:8] = 150
    truths.append(LocoGroundTruth("logical_anomalies", c))
    for i in (2, 3, 4):
        maps[i][truths[i].channels.any(axis=0)] += 0.2
    return maps, truths


def _brute_point(maps, truths, t, group):
    """(mean sPRO, FPR) at threshold t for group + all good images, directly from the definition."""
    spros, fp, n_free = [], 0, 0
    for m, gt in zip(maps, truths):
        if gt.group not in ("good", group):
            continue
        pred = m.astype(np.float64) > t
        union = np.zeros(m.shape, bool)
        if gt.channels is not None:
            for ch in gt.channels:
                inside = ch > 0
                value = int(ch[inside][0])
                spros.append(min((pred & inside).sum() / _saturation(value, inside.sum()), 1.0))
                union |= inside
        fp += (pred & ~union).sum()
        n_free += (~union).sum()
    return np.mean(spros), fp / n_free


def _brute_au_spro(maps, truths, group, limit):
    """Exact polyline through every distinct operating point (all unique scores), trapezoids to the limit."""
    values = np.unique(np.concatenate([m.ravel() for m in maps]).astype(np.float64))
    thresholds = np.r_[values[-1] + 1, values[::-1], values[0] - 1]  # map > t for every distinct step
    pts = [_brute_point(maps, truths, t, group) for t in thresholds]
    y, x = np.array(pts).T
    area = 0.0
    for k in range(1, len(x)):
        if x[k] <= limit:
            area += 0.5 * (y[k] + y[k - 1]) * (x[k] - x[k - 1])
        else:
            if x[k - 1] < limit:
                y_lim = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
                area += 0.5 * (y[k - 1] + y_lim) * (limit - x[k - 1])
            break
    return area / limit


@pytest.mark.parametrize("seed", range(3))
def test_spro_points_match_brute_force_at_tricky_thresholds(seed):
    maps, truths = _loco_case(seed)
    curves = build_curve_set(maps, truths, CONFIG)
    vals = np.unique(np.concatenate([m.ravel() for m in maps])).astype(np.float64)
    thresholds = np.r_[vals, (vals[:-1] + vals[1:]) / 2, np.nextafter(vals, -np.inf), np.nextafter(vals, np.inf),
                       vals[0] - 1, vals[-1] + 1]
    for group in ("structural_anomalies", "logical_anomalies"):
        spro, fpr = curves.values(thresholds, group)
        for t, s, f in zip(thresholds, spro, fpr):
            bs, bf = _brute_point(maps, truths, t, group)
            assert s == pytest.approx(bs, abs=1e-12) and f == pytest.approx(bf, abs=1e-12), t


@pytest.mark.parametrize("seed", range(3))
def test_au_spro_matches_brute_force_polyline(seed):
    maps, truths = _loco_case(seed)
    res = loco_metrics(maps, truths, CONFIG)
    assert res["channels_with_saturation_above_area"] == 2  # the two absolute_large channels
    assert res["channels_with_zero_saturation_area"] == 2   # relative 0.1 of areas 4
    for group in ("structural_anomalies", "logical_anomalies"):
        for limit in ("0.01", "0.05", "0.1", "0.3", "1.0"):
            assert res["au_spro"][group][limit] == pytest.approx(
                _brute_au_spro(maps, truths, group, float(limit)), abs=1e-9), (group, limit)
    for limit in ("0.05", "1.0"):
        assert res["au_spro"]["mean"][limit] == pytest.approx(
            0.5 * (res["au_spro"]["structural_anomalies"][limit] + res["au_spro"]["logical_anomalies"][limit]))
    curve = res["curve"]
    assert curve["fpr"][0] == 0 and curve["fpr"][-1] == 1
    assert curve["mean_spro"][0] == 0 and curve["mean_spro"][-1] == 1


def test_au_spro_good_only_subset_and_image_auroc():
    maps, truths = _loco_case(0)
    res = loco_metrics(maps, truths, CONFIG)
    scores = [float(m.max()) for m in maps]
    for group, idx in (("structural_anomalies", [2, 3]), ("logical_anomalies", [4, 5])):
        ref = roc_auc_score([0, 0, 1, 1], [scores[0], scores[1]] + [scores[i] for i in idx])
        assert res["image_auroc"][group] == pytest.approx(ref)
    assert res["image_auroc"]["mean"] == pytest.approx(
        0.5 * (res["image_auroc"]["structural_anomalies"] + res["image_auroc"]["logical_anomalies"]))
    with pytest.raises(ValueError, match="at least one anomalous image"):
        loco_metrics(maps[:2], truths[:2], CONFIG)
    with pytest.raises(ValueError, match="not in defects_config"):
        bad = LocoGroundTruth("logical_anomalies", np.full((1, 7, 8), 7, np.uint8))
        loco_metrics(maps[:1] + maps[4:5], truths[:1] + [bad], CONFIG)


def test_au_spro_refinement_approaches_exact_curve_with_continuous_scores():
    maps, truths = _loco_case(5, levels=10_000)  # mostly distinct scores: 50 initial thresholds miss steps
    res = loco_metrics(maps, truths, CONFIG)
    assert res["refinement_steps"] >= 1 and res["num_thresholds"] > 50
    for group in ("structural_anomalies", "logical_anomalies"):
        assert res["au_spro"][group]["1.0"] == pytest.approx(_brute_au_spro(maps, truths, group, 1.0), abs=0.01)


def test_count_greater_is_exact_for_float32_against_float64_thresholds():
    x = np.sort(np.array([0.1, 0.2, 0.2, 0.3], dtype=np.float32))
    t = np.array([0.1, float(np.float32(0.1)), 0.2, float(np.float32(0.2)) - 1e-12, 0.30000001])
    expected = [(x.astype(np.float64) > v).sum() for v in t]
    assert count_greater(x, t).tolist() == expected


def test_initial_thresholds_and_seeded_subsampling():
    maps, truths = _loco_case(1, levels=1000)
    curves = build_curve_set(maps, truths, CONFIG)
    init = initial_thresholds(curves)
    all_scores = np.sort(np.concatenate([m.ravel() for m in maps]))
    assert len(init) == 50 and init == sorted(init, reverse=True)
    assert init[0] == pytest.approx(all_scores[-1] + 1e-6) and init[-1] == pytest.approx(all_scores[0] - 1e-6)
    assert init[1:-1] == all_scores[np.linspace(0, all_scores.size - 1, 50, dtype=int)[1:-1]][::-1].tolist()
    a = build_curve_set(maps, truths, CONFIG, seed=3, max_sampled_scores=60)
    b = build_curve_set(maps, truths, CONFIG, seed=3, max_sampled_scores=60)
    c = build_curve_set(maps, truths, CONFIG, seed=4, max_sampled_scores=60)
    assert a.sample.size == 6 * 10  # floor(60 / 6 images) per image
    assert np.array_equal(a.sample, b.sample) and not np.array_equal(a.sample, c.sample)


def test_refinement_allocates_queries_in_proportion_to_gap_length():
    calls = []

    def f(qs):  # a curve with two jumps: 0.75 at query 5 and 0.25 at query 2 (queries descending)
        calls.append(list(qs))
        q = np.asarray(qs, dtype=np.float64)
        return np.stack([np.where(q < 5, 0.75, 0.0) + np.where(q < 2, 0.25, 0.0), np.zeros_like(q)], axis=1)

    queries = [10.0, 6.0, 4.0, 1.0, 0.0]
    out_q, out_v, steps = refine_thresholds(queries, f(queries), f, max_distance=0.01, max_steps=1)
    # 2 gaps, 18 extra queries: 1 + round(0.75 * 18) = 15 in the larger gap, 1 + 4 = 5 in the other
    new = calls[1]
    assert len(new) == 20 and steps == 1
    assert sum(4.0 < q < 6.0 for q in new) == 15 and sum(1.0 < q < 4.0 for q in new) == 5
    assert out_q == sorted(out_q, reverse=True) and len(out_q) == 25
    q2, v2, steps2 = refine_thresholds(queries, f(queries), f, max_distance=0.01, max_steps=10)
    assert steps2 == 10  # the jumps never close
    assert refine_thresholds([1.0, 0.0], np.zeros((2, 2)), f)[2] == 0  # flat curve: no refinement
