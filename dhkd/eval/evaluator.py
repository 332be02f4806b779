"""The evaluator: fit the map quantiles on good validation images, compute anomaly maps at the original
image resolution, score them, and write results.json / results.md (plus optional TIFF maps and overlays).

The model interface used here (eval mode):
  ``model.raw_maps(images) -> (map_l, map_g)``  each (b, 1, h, w) fp32, unnormalised;
  ``model.set_quantiles(qa_l, qb_l, qa_g, qb_g)``;
  ``model.normalized_map(map_l, map_g, size=(H, W)) -> (b, 1, H, W)`` combined and bilinearly resized (for
  an image cut into windows also ``plan=``: the maps are the windows of one image, :mod:`dhkd.data.windows`);
  ``model.image_size`` the square input side; ``model.input_mode`` (optional, default "squash") how images
  become inputs;
  ``model.image_score_top`` (optional, default 0) the image score's rule, as :func:`dhkd.models.scoring.image_score`.

Every image score is computed from its full-resolution map by :func:`dhkd.models.scoring.image_score`: the
map's maximum, or with ``image_score_top`` = P > 0 the mean of its largest P % of values.

:func:`evaluate_maps` scores a folder of TIFF maps from any method, without a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..data import AnomalyDataset, build_dataset
from ..data.common import read_rgb
from ..data.windows import batch_windows, check_same_input_mode
from ..models.calibration import dataset_batches, fit_quantiles, model_device
from ..models.scoring import check_finite, check_image_score_top, image_score, resize_map
from ..runtime.progress import progress
from . import maps_io
from .metrics import LocoGroundTruth, MetricInputs, MetricResults, compute_metrics
from .report import EvaluationResult, ImageScore, MapInfo, write_results
from .visualize import colour_scale, save_overlay

@torch.no_grad()
def anomaly_maps(model, dataset: AnomalyDataset, *, batch_size: int = 8, device=None, smooth_sigma: float = 0.0,
                 num_workers: int = 0) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (item, map) per image in dataset order; the map is float32 (H0, W0), unclamped, optionally
    Gaussian-smoothed with ``smooth_sigma`` at full resolution."""
    device = model_device(model, device)
    check_same_input_mode(model, dataset)
    for batch in dataset_batches(dataset, batch_size=batch_size, num_workers=num_workers, progress=progress,
                                 desc="evaluate"):
        x, counts = batch_windows(batch)  # an image cut into windows (input_mode) gives one map per window
        map_l, map_g = model.raw_maps(x.to(device))
        starts = np.cumsum([0] + counts)
        for j, item in enumerate(batch):
            part = slice(int(starts[j]), int(starts[j + 1]))
            windows = {"plan": item["windows"]} if "windows" in item else {}  # an image cut into windows
            m = model.normalized_map(map_l[part], map_g[part], size=tuple(item["size"]), **windows)
            check_finite(m, item["path"])
            m = m.reshape(m.shape[-2:]).float().cpu().numpy()
            if smooth_sigma > 0:
                m = gaussian_filter(m, sigma=smooth_sigma)
            yield item, m


@torch.no_grad()
def scorer_maps(map_fn, dataset: AnomalyDataset, *, batch_size: int = 8, smooth_sigma: float = 0.0,
                num_workers: int = 0) -> Iterator[tuple[dict, np.ndarray]]:
    """Like :func:`anomaly_maps` for any scorer: ``map_fn(images) -> (b, 1, h, w)`` maps at any resolution
    (a baseline's, or a model's), bilinearly resized to each image's original size, optionally smoothed."""
    for batch in dataset_batches(dataset, batch_size=batch_size, num_workers=num_workers, progress=progress,
                                 desc="evaluate"):
        maps = map_fn(torch.stack([it["image"] for it in batch])).float()
        for j, item in enumerate(batch):
            m = resize_map(maps[j:j + 1], tuple(item["size"]))
            check_finite(m, item["path"])
            m = m.reshape(m.shape[-2:]).cpu().numpy()
            yield item, (gaussian_filter(m, sigma=smooth_sigma) if smooth_sigma > 0 else m)


def evaluate_scorer(map_fn, dataset: AnomalyDataset, output_dir: str | Path, *, source: str,
                    smooth_sigma: float = 0.0, batch_size: int = 8, seed: int = 0, overlays: bool = False,
                    extra: dict | None = None) -> dict:
    """Evaluate the maps of any scorer (see :func:`scorer_maps`) on ``dataset`` (a test split) and write
    results.json / results.md; ``source`` names the scorer in the results, ``extra`` adds entries to them."""
    maps, masks = [], []
    for item, m in scorer_maps(map_fn, dataset, batch_size=batch_size, smooth_sigma=smooth_sigma):
        maps.append(m)
        masks.append(item["mask"].numpy())
    return evaluate_map_list(dataset, maps, masks, output_dir, source=source, smooth_sigma=smooth_sigma,
                             overlays=overlays, seed=seed, extra=extra)


def evaluate_map_list(dataset: AnomalyDataset, maps: list[np.ndarray], masks: list[np.ndarray],
                      output_dir: str | Path, *, source: str, smooth_sigma: float | None = None,
                      overlays: bool = False, seed: int = 0, extra: dict | None = None,
                      image_score_top: float = 0.0) -> dict:
    """Score full-resolution ``maps`` already computed (dataset order; ``masks`` as ``dataset.mask(i)``)
    and write results.json / results.md; ``smooth_sigma`` only records the smoothing the maps had."""
    if len(maps) != len(dataset) or len(masks) != len(dataset):
        raise ValueError(f"{len(maps)} maps and {len(masks)} masks for {len(dataset)} images of {dataset!r}")
    return _finish(dataset, maps, masks, Path(output_dir), source=source, smooth_sigma=smooth_sigma,
                   overlays=overlays, seed=seed, extra=extra or {}, image_score_top=image_score_top)


def map_scores(maps: list[np.ndarray], image_score_top: float = 0.0) -> np.ndarray:
    """The image score of each full-resolution map (:func:`dhkd.models.scoring.image_score`), float64."""
    check_image_score_top(image_score_top)
    return np.array([float(image_score(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None],
                                       image_score_top)[0]) for m in maps], dtype=np.float64)


def score_maps(dataset: AnomalyDataset, maps: list[np.ndarray], masks: list[np.ndarray], scores: np.ndarray, *,
               seed: int = 0) -> MetricResults:
    """Every registered metric that the ground truth of ``dataset`` allows (``dataset.provides``), on the
    full-resolution ``maps`` (dataset order) given each image's (K, H0, W0) ground truth and image score
    (:func:`map_scores`)."""
    provides = dataset.provides
    loco = None
    if "loco_channels" in provides:
        loco = [LocoGroundTruth(s.defect, g if s.label else None) for s, g in zip(dataset.samples, masks)]
    inputs = MetricInputs(maps=maps, scores=scores, labels=dataset.labels,
                          masks=[g.any(axis=0) for g in masks] if "pixel_masks" in provides else None,
                          loco=loco, defects_config=dataset.defects_config, seed=seed)
    return compute_metrics(inputs, provides)


def _finish(dataset: AnomalyDataset, maps, masks, output_dir: Path, *, source: str, smooth_sigma: float | None,
            overlays: bool, seed: int, extra: dict, image_score_top: float = 0.0) -> dict:
    scores = map_scores(maps, image_score_top)
    result = EvaluationResult(
        dataset=dataset.name, category=dataset.category, split=dataset.split,
        ground_truth=tuple(sorted(dataset.provides)),
        map=MapInfo(source=source, smoothing_sigma=smooth_sigma, image_score_top=float(image_score_top)),
        metrics=score_maps(dataset, maps, masks, scores, seed=seed), extra=dict(extra),
        images=[ImageScore(str(s.path), s.defect, s.label, float(v)) for s, v in zip(dataset.samples, scores)])
    if overlays:
        vmin, vmax = colour_scale(maps, seed=seed)
        result.overlay_colour_scale = {"vmin": vmin, "vmax": vmax}
        for s, m, g in zip(dataset.samples, maps, masks):
            path = Path(output_dir) / "overlays" / dataset.category / s.defect / f"{s.path.stem}.png"
            save_overlay(path, np.asarray(read_rgb(s.path)), m, vmin, vmax, g.any(axis=0) if s.label else None)
    write_results(result, output_dir)
    return result.to_dict()


def evaluate(model, dataset: AnomalyDataset, output_dir: str | Path, *, smooth_sigma: float = 0.0,
             export_maps: bool = False, overlays: bool = False, batch_size: int = 8, device=None,
             seed: int = 0, num_workers: int = 0, quantiles: dict | None = None) -> dict:
    """Evaluate a model whose quantiles are already set on ``dataset`` (a test split); write results.json,
    results.md and, if asked, ``anomaly_maps/<category>/test/<defect>/<id>.tiff`` and overlay PNGs."""
    output_dir = Path(output_dir)
    maps, masks = [], []
    for item, m in anomaly_maps(model, dataset, batch_size=batch_size, device=device,
                                smooth_sigma=smooth_sigma, num_workers=num_workers):
        maps.append(m)
        masks.append(item["mask"].numpy())
        if export_maps:
            maps_io.write_map(maps_io.map_path(output_dir / "anomaly_maps", dataset.category, item["defect"],
                                               Path(item["path"])), m)
    extra = {"quantiles": quantiles} if quantiles is not None else {}
    return _finish(dataset, maps, masks, output_dir, source="model", smooth_sigma=smooth_sigma,
                   overlays=overlays, seed=seed, extra=extra,
                   image_score_top=float(getattr(model, "image_score_top", 0.0)))


def evaluate_model(model, dataset: str, root: str | Path, category: str, output_dir: str | Path, *,
                   seed: int = 0, batch_size: int = 8, device=None, smooth_sigma: float = 0.0,
                   export_maps: bool = False, overlays: bool = False, num_workers: int = 0,
                   **dataset_options) -> dict:
    """The whole model evaluation: fit the quantiles on the validation split (LOCO's validation folder, else
    the seeded 10% hold-out of train/good), then evaluate the test split. Call it after loading a model."""
    model.eval()
    size, mode = int(model.image_size), getattr(model, "input_mode", "squash")
    val = build_dataset(dataset, root, category, "validation", size, seed, mode, **dataset_options)
    test = build_dataset(dataset, root, category, "test", size, seed, mode, **dataset_options)
    q = fit_quantiles(model, val, batch_size=batch_size, device=device, seed=seed, num_workers=num_workers,
                      progress=progress)
    return evaluate(model, test, output_dir, smooth_sigma=smooth_sigma, export_maps=export_maps,
                    overlays=overlays, batch_size=batch_size, device=device, seed=seed,
                    num_workers=num_workers, quantiles=q)


def evaluate_maps(maps_dir: str | Path, dataset: str, root: str | Path, category: str, output_dir: str | Path,
                  *, seed: int = 0, overlays: bool = False, smooth_sigma: float = 0.0,
                  image_score_top: float = 0.0, **dataset_options) -> dict:
    """Score a folder of float TIFF maps from any method (one per test image, at the original image size,
    ``<maps_dir>/<category>/test/<defect>/<id>.tiff``) and write results.json / results.md.
    ``smooth_sigma`` > 0 applies a Gaussian to each map first (0: the maps are scored as stored);
    ``image_score_top`` as :func:`map_scores`."""
    test = build_dataset(dataset, root, category, "test", 1, seed, **dataset_options)
    base = maps_io.resolve_maps_base(Path(maps_dir), dataset, category)
    maps, masks = [], []
    for i, s in enumerate(test.samples):
        gt = test.mask(i)
        m = maps_io.read_map(base, s.defect, s.path, gt.shape[1:])
        maps.append(gaussian_filter(m, sigma=smooth_sigma) if smooth_sigma > 0 else m)
        masks.append(gt)
    return _finish(test, maps, masks, Path(output_dir), source=str(base),
                   smooth_sigma=smooth_sigma if smooth_sigma > 0 else None,
                   overlays=overlays, seed=seed, extra={}, image_score_top=image_score_top)
