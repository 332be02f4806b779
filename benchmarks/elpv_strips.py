"""A non-square development set made from ELPV: strips of 1 to 3 solar cells side by side, cropped to varied
lengths, as a folder dataset (``dhkd train --dataset folder --root OUT --category elpv_strips``).

ELPV's cells are all 300×300; real inspection images are not. This set keeps ELPV's real defects and labels
and gives images of 300 × 300…900 pixels (aspect 1 to 3), for measuring how an image becomes the model's
square inputs (``input_mode``: squash, pad, tile; docs/recipe.md). Construction, all seeded:

* a strip holds k ∈ {1, 2, 3} cells (equally likely) of ONE cell type (mono or poly), side by side;
* a strip of k ≥ 2 cells is cropped to a random width in [300·k − 150, 300·k] at a random offset, so strips
  do not end on cell borders (the cut cells are good cells; a defective cell is never cut);
* training strips use the good cells of ELPV's training split (train + validation), each cell once; good
  test strips the good test cells, each once; every defective cell gives one anomalous test strip, its other
  cells drawn from the good test cells of its type.

ELPV is CC BY-NC-SA: the strips are for evaluation only; write them outside the repository.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from dhkd.data import build_dataset

CELL = 300


def _cells_by_type(split: str) -> dict[str, list[tuple[Path, int]]]:
    """(path, label) of the ELPV cells of ``split`` per cell type."""
    out = {}
    for kind in ("mono", "poly"):
        ds = build_dataset("elpv", "installed", kind, split, 256)
        out[kind] = [(s.path, s.label) for s in ds.samples]
    return out


def _strip(paths: list[Path], keep: int | None, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """The strip of ``paths`` side by side, cropped (k ≥ 2) to a random width at a random offset that keeps
    cell ``keep`` whole; returns (grayscale array, crop start, crop width)."""
    arr = np.concatenate([np.asarray(Image.open(p).convert("L")) for p in paths], axis=1)
    k = len(paths)
    width = CELL if k == 1 else int(rng.integers(CELL * k - CELL // 2, CELL * k + 1))
    lo, hi = 0, CELL * k - width
    if keep is not None:
        lo, hi = max(lo, (keep + 1) * CELL - width), min(hi, keep * CELL)
    start = int(rng.integers(lo, hi + 1))
    return arr[:, start:start + width], start, width


def make(out: Path, seed: int = 0) -> dict:
    """Write the strips under ``out``/elpv_strips/{normal, normal_test, abnormal}; return the manifest."""
    rng = np.random.default_rng(seed)
    base = out / "elpv_strips"
    dirs = {name: base / name for name in ("normal", "normal_test", "abnormal")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    train = {t: [p for p, _ in cells] for t, cells in _cells_by_type("train").items()}
    for t, cells in _cells_by_type("validation").items():
        train[t] += [p for p, _ in cells]
    test = _cells_by_type("test")
    manifest = []

    def write(folder: str, paths: list[Path], keep: int | None) -> None:
        arr, start, width = _strip(paths, keep, rng)
        name = f"{len(manifest):04d}.png"
        Image.fromarray(arr).save(dirs[folder] / name)
        manifest.append({"file": f"{folder}/{name}", "cells": [p.name for p in paths], "crop_start": start,
                         "width": width, "defective_cell": keep})

    def good_strips(folder: str, cells: list[Path]) -> None:
        order = [cells[i] for i in rng.permutation(len(cells))]
        while order:
            k = min(int(rng.integers(1, 4)), len(order))
            write(folder, order[:k], None)
            order = order[k:]
    for t in ("mono", "poly"):
        good_strips("normal", train[t])
        good_test = [p for p, label in test[t] if label == 0]
        good_strips("normal_test", good_test)
        for p in (p for p, label in test[t] if label == 1):
            k = int(rng.integers(1, 4))
            slot = int(rng.integers(0, k))
            others = [good_test[i] for i in rng.choice(len(good_test), size=k - 1, replace=False)]
            write("abnormal", others[:slot] + [p] + others[slot:], slot)
    info = {"seed": seed, "strips": manifest}
    (base / "manifest.json").write_text(json.dumps(info, indent=1))
    return info


def auroc_by_cells(results: dict, manifest: dict) -> dict[str, float]:
    """Image AUROC (%) of an evaluation of the strips (``results.json``) over all strips and over the strips of
    k = 1, 2, 3 cells each (good and anomalous strips of that length)."""
    from sklearn.metrics import roc_auc_score

    cells = {s["file"]: len(s["cells"]) for s in manifest["strips"]}
    rows = [(cells["/".join(Path(im["path"]).parts[-2:])], im["label"], im["score"]) for im in results["images"]]
    out = {"all": 100 * roc_auc_score([r[1] for r in rows], [r[2] for r in rows])}
    for k in (1, 2, 3):
        part = [r for r in rows if r[0] == k]
        out[f"{k} cells"] = 100 * roc_auc_score([r[1] for r in part], [r[2] for r in part])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write elpv_strips/ into (or that "
                                                                   "holds it, with --breakdown)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--breakdown", type=Path, metavar="RESULTS_JSON",
                        help="instead of writing the strips: the image AUROC of an evaluation of them "
                             "(its results.json) over all strips and per strip length in cells")
    args = parser.parse_args()
    if args.breakdown is not None:
        manifest = json.loads((args.output / "elpv_strips" / "manifest.json").read_text())
        result = auroc_by_cells(json.loads(args.breakdown.read_text()), manifest)
        print(", ".join(f"{k}: {v:.2f}" for k, v in result.items()))
        return
    info = make(args.output, args.seed)
    counts = {}
    for s in info["strips"]:
        counts[s["file"].split("/")[0]] = counts.get(s["file"].split("/")[0], 0) + 1
    print(f"wrote {len(info['strips'])} strips under {args.output / 'elpv_strips'}: {counts}")


if __name__ == "__main__":
    main()
