"""Map post-processing measured on cached feature-grid maps (border handling, per-pixel normalisation with
good-image statistics, smoothing), scored by the package's evaluator at full resolution.

    python benchmarks/recipe_maps.py --maps GRID_PREFIX --data elpv:installed:all --output OUT [--variants ...]

GRID_PREFIX_validation_grid.npy and GRID_PREFIX_test_grid.npy hold (n, 1, h, w) maps of the validation and
test splits in dataset order (any scorer; benchmarks/compare.py --save-grids writes them as
<output>/<dataset>_<category>/<method>/grids). Per
variant: the evaluator's results.json/md under OUT/<variant>/ and one row in OUT/recipe_maps.md with the share
of good test images whose map maximum lies in the outer 5 % of the image. ``--image-score-top P`` adds a column:
the image AUROC when the image score is the mean of the map's top P % of pixels instead of its maximum
(the package's ``image_score_top``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from dhkd.baselines.compare import DataSpec
from dhkd.data import build_dataset
from dhkd.eval.evaluator import evaluate_map_list, map_scores


def replicate_margin(m: np.ndarray, k: int) -> np.ndarray:
    """Replace the outer ``k`` cells of each (…, h, w) map by the nearest interior value."""
    if k <= 0:
        return m
    inner = torch.from_numpy(np.ascontiguousarray(m[..., k:-k, k:-k]))
    return F.pad(inner, (k, k, k, k), mode="replicate").numpy()


def variant_maps(name: str, val: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Grid maps of the test split after post-processing ``name`` (parts joined by '+')."""
    out = test.astype(np.float64)
    ref = val.astype(np.float64)
    for part in name.split("+"):
        if part == "raw":
            continue
        if part.startswith("margin"):
            k = int(part[len("margin"):])
            out, ref = replicate_margin(out, k), replicate_margin(ref, k)
        elif part == "submean":
            mu = ref.mean(0, keepdims=True)
            out, ref = out - mu, ref - mu
        elif part == "zscore":
            if ref.shape[0] < 2:
                raise ValueError(f"zscore needs at least 2 validation maps, got {ref.shape[0]}")
            mu, sd = ref.mean(0, keepdims=True), ref.std(0, keepdims=True)
            sd = sd + max(float(np.median(sd)), 1e-12)  # a floor against near-zero pixel std from few images
            out, ref = (out - mu) / sd, (ref - mu) / sd
        elif part.startswith("gauss"):
            s = float(part[len("gauss"):])
            out = np.stack([gaussian_filter(m, sigma=(0, s, s)) for m in out])
            ref = np.stack([gaussian_filter(m, sigma=(0, s, s)) for m in ref])
        else:
            raise ValueError(f"unknown post-processing {part!r}")
    return out.astype(np.float32)


def border_share(maps: list[np.ndarray], labels: np.ndarray, frac: float = 0.05) -> float:
    """Share of good images whose map maximum lies in the outer ``frac`` of the image (either axis)."""
    hits = []
    for m, y in zip(maps, labels):
        if y:
            continue
        i, j = np.unravel_index(int(np.argmax(m)), m.shape)
        h, w = m.shape
        hits.append(min(i, h - 1 - i) < frac * h or min(j, w - 1 - j) < frac * w)
    return float(np.mean(hits))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--maps", required=True, help="prefix of the cached grid maps")
    p.add_argument("--data", required=True, type=DataSpec.parse)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--variants", nargs="+", default=["raw", "margin1", "margin2", "submean", "zscore",
                                                      "gauss1", "margin1+zscore", "zscore+gauss1"])
    p.add_argument("--image-score-top", type=float, default=None, metavar="P",
                   help="also report the image AUROC with the mean of the top P %% of each map as its score")
    args = p.parse_args()
    if args.image_score_top is not None and not 0 < args.image_score_top <= 100:
        p.error(f"--image-score-top is a percentage in (0, 100], got {args.image_score_top}")
    val = np.load(f"{args.maps}_validation_grid.npy")
    test_grid = np.load(f"{args.maps}_test_grid.npy")
    spec = args.data
    test = build_dataset(spec.dataset, spec.root, spec.category, "test", 16)
    truths = [test.mask(i) for i in range(len(test))]
    rows = []
    for name in args.variants:
        grids = torch.from_numpy(variant_maps(name, val, test_grid))
        maps = [F.interpolate(g[None], size=t.shape[1:], mode="bilinear", align_corners=False)[0, 0].numpy()
                for g, t in zip(grids, truths)]
        share = border_share(maps, test.labels)
        res = evaluate_map_list(test, maps, truths, args.output / name, source=f"{args.maps} ({name})",
                                extra={"post_processing": name, "good_max_in_outer_5pct": share})
        rows.append({"variant": name, "metrics": res["metrics"], "good_max_in_outer_5pct": share})
        if args.image_score_top is not None:
            scores = map_scores(maps, args.image_score_top)  # the package's image score with that rule
            rows[-1]["image_auroc_top_mean"] = float(roc_auc_score(test.labels, scores))
        print(json.dumps(rows[-1]), flush=True)
    names = list(rows[0]["metrics"])
    top = [] if args.image_score_top is None else [f"image_auroc, top {args.image_score_top:g} % mean"]
    lines = ["| variant | " + " | ".join(names + top) + " | good maps peaking in outer 5 % |",
             "|---" * (len(names) + len(top) + 2) + "|"]
    for r in rows:
        cells = [r["metrics"][k] for k in names] + ([r["image_auroc_top_mean"]] if top else [])
        cells = [v.get("0.3") if isinstance(v, dict) else v for v in cells]
        lines.append(f"| {r['variant']} | " + " | ".join("n/a" if v is None else f"{100 * v:.2f}" for v in cells)
                     + f" | {100 * r['good_max_in_outer_5pct']:.0f} % |")
    (args.output / "recipe_maps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
