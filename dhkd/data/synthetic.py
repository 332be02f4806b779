"""A built-in synthetic anomaly dataset, generated deterministically and written in MVTec AD layout.

Each image shows a textured round "product" (smooth colour gradient + periodic stripes + noise) on a gradient
background; the product's look is fixed by the generator seed and every image jitters it slightly. Defective
test images carry one of four anomalies with an exact mask: a scratch, a blob, a colour spot or a missing part.
The files go to <root>/<category>/{train/good, test/<type>, ground_truth/<type>/<id>_mask.png} plus a
``synthetic.json`` recording the parameters, so every tool (training, evaluate --maps, the official scripts)
works on it. Generation is skipped when the folder already holds the same parameters.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .common import AnomalyDataset, DatasetError
from . import mvtec_ad

DEFECT_TYPES = ("scratch", "blob", "color_spot", "missing_part")
MARKER = "synthetic.json"


def _product_style(rng: np.random.Generator) -> dict:
    return {
        "colour_a": rng.uniform(0.35, 0.75, 3), "colour_b": rng.uniform(0.35, 0.75, 3),
        "background": rng.uniform(0.1, 0.3, 3), "freq": rng.uniform(6.0, 10.0),
        "angle": rng.uniform(0.0, np.pi), "amp": rng.uniform(0.06, 0.12),
    }


def _render(style: dict, size: int, rng: np.random.Generator):
    """A defect-free image (float HxWx3 in [0, 1]), its background and the product's disc mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    g = 0.5 + 0.5 * (xx * np.cos(0.3) + yy * np.sin(0.3))
    background = style["background"] * (0.7 + 0.6 * g)[..., None]
    cx, cy = 0.5 + rng.uniform(-0.02, 0.02, 2)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 0.36 ** 2
    t = np.clip((xx - cx + yy - cy) / 1.0 + 0.5, 0, 1)[..., None]
    angle = style["angle"] + rng.uniform(-0.05, 0.05)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * style["freq"] * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    product = (1 - t) * style["colour_a"] + t * style["colour_b"] + style["amp"] * stripes[..., None]
    img = np.where(disc[..., None], product, background)
    img = img + rng.normal(0.0, 0.015, img.shape)
    return img, background, disc


def _random_point_in(disc: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    ys, xs = np.nonzero(disc)
    ok = (ys >= margin) & (ys < disc.shape[0] - margin) & (xs >= margin) & (xs < disc.shape[1] - margin)
    i = rng.integers(ok.sum())
    return int(ys[ok][i]), int(xs[ok][i])


def _add_defect(kind: str, img: np.ndarray, background: np.ndarray, disc: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Draw one defect of ``kind`` into ``img`` in place; return its exact boolean mask."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = _random_point_in(disc, rng, margin=size // 8)
    if kind == "scratch":
        a = rng.uniform(0, np.pi)
        half = rng.uniform(0.12, 0.22) * size
        d_along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        d_across = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        mask = (np.abs(d_along) <= half) & (np.abs(d_across) <= rng.uniform(0.6, 1.4)) & disc
        img[mask] = rng.choice([0.05, 0.95]) + rng.normal(0, 0.02, (int(mask.sum()), 3))
    elif kind == "blob":
        ry, rx = rng.uniform(0.04, 0.09, 2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        mask &= disc
        img[mask] = img[mask] * rng.uniform(0.45, 0.65) + rng.uniform(0.0, 0.1)
    elif kind == "color_spot":
        r = rng.uniform(0.02, 0.05) * size
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        mask &= disc
        colour = np.zeros(3)
        colour[rng.integers(3)] = 0.95
        img[mask] = colour + rng.normal(0, 0.02, (int(mask.sum()), 3))
    elif kind == "missing_part":
        a = rng.uniform(0, 2 * np.pi)
        ey, ex = size / 2 + 0.36 * size * np.sin(a), size / 2 + 0.36 * size * np.cos(a)
        r = rng.uniform(0.08, 0.14) * size
        mask = ((yy - ey) ** 2 + (xx - ex) ** 2 <= r * r) & disc
        img[mask] = background[mask] + rng.normal(0, 0.015, (int(mask.sum()), 3))
    else:
        raise ValueError(f"unknown defect type {kind!r}; expected one of {DEFECT_TYPES}")
    if not mask.any():
        raise RuntimeError(f"synthetic {kind} produced an empty mask")  # cannot happen: centre is in the disc
    return mask


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def generate(directory: Path, *, seed: int = 0, size: int = 128, n_train: int = 40,
             n_test_good: int = 10, n_test_defect: int = 20) -> None:
    """Write one synthetic category to ``directory`` (MVTec AD layout). Deterministic in all arguments."""
    if size < 32:
        raise ValueError(f"synthetic image size must be at least 32, got {size}")
    if min(n_train, n_test_good, n_test_defect) < 1 or n_train < 2:
        raise ValueError("synthetic data needs n_train >= 2 and at least one good and one defective test image")
    directory = Path(directory)
    style = _product_style(np.random.default_rng([seed, 0]))
    for i in range(n_train):
        img, _, _ = _render(style, size, np.random.default_rng([seed, 1, i]))
        _save_png(img, directory / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        img, _, _ = _render(style, size, np.random.default_rng([seed, 2, i]))
        _save_png(img, directory / "test" / "good" / f"{i:03d}.png")
    counters = dict.fromkeys(DEFECT_TYPES, 0)
    for i in range(n_test_defect):
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        rng = np.random.default_rng([seed, 3, i])
        img, background, disc = _render(style, size, rng)
        mask = _add_defect(kind, img, background, disc, rng)
        k = counters[kind]
        counters[kind] += 1
        _save_png(img, directory / "test" / kind / f"{k:03d}.png")
        _save_png(mask.astype(np.uint8) * 255, directory / "ground_truth" / kind / f"{k:03d}_mask.png")


def ensure(root: Path, category: str = "synthetic", **params) -> Path:
    """Generate <root>/<category> unless it already exists. Existing data is reused when every parameter
    given here matches the recorded ones (parameters left out are not checked)."""
    target = Path(root) / category
    marker = target / MARKER
    if marker.is_file():
        existing = json.loads(marker.read_text())
        differ = {k: v for k, v in params.items() if existing.get(k) != v}
        if differ:
            raise DatasetError(f"{target} holds synthetic data made with {existing}, not {differ}; "
                               "choose another root or category")
        return target
    params = {"seed": 0, "size": 128, "n_train": 40, "n_test_good": 10, "n_test_defect": 20, **params}
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"{target} exists and is not a synthetic dataset (no {MARKER}); "
                           "choose another root or category")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=target.parent))
    try:
        generate(tmp, **params)
        (tmp / MARKER).write_text(json.dumps(params, indent=1, sort_keys=True))
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if marker.is_file():  # another process finished first with the same parameters
            return ensure(root, category, **params)
        raise
    return target


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0, **generator_params
          ) -> AnomalyDataset:
    """Generate (if needed) and read the synthetic set. ``seed`` drives the validation hold-out only; the
    images come from ``generator_params`` (generator_seed, size, n_train, n_test_good, n_test_defect), which
    do not depend on ``seed``, so training seeds share the same data."""
    gen = {("seed" if k == "generator_seed" else k): v for k, v in generator_params.items()}
    ensure(root, category or "synthetic", **gen)
    return mvtec_ad.build(root, category or "synthetic", split, image_size, seed, name="synthetic")
