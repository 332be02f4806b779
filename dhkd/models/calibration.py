"""Calibration of a trained model, in one place: the teacher's channel statistics, the map quantiles fitted on
good validation images, and the map normalisation built from them.

The trainer, the evaluator, the latency benchmark (DHKD and its EfficientAD-M peer) and the deployment module
all calibrate through these functions, so a map means the same thing everywhere:

    norm(m) = 0.1 · (m − q_a) / (q_b − q_a)          (q_a, q_b: the 0.9 and 0.995 quantiles of m)
    map     = 0.5 · norm(map_L) + 0.5 · norm(map_G) = w_L · map_L + w_G · map_G + c

with w = 0.05 / (q_b − q_a) and c = −(w_L · q_a,L + w_G · q_a,G), computed in float64 once.

A model whose second map is absent (DHKD without Gnet, the "Lnet only" ablation) declares ``map_mix = (1, 0)``:
its map is norm(map_L) alone, map_G is not fitted and its quantile slots hold (0, 0).

A model with per-cell normalisation (``cell_norm``, an option of the CPU recipe) also stores, per feature cell,
the mean and std of that normalised map over the same good images, fitted right after the quantiles (the
statistics describe the map they normalise, before any smoothing):

    std_cell = std over images (float64) + the median of std_cell over the cells   (a floor for quiet cells)
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data.windows import batch_windows, check_same_input_mode

QUANTILES = (0.9, 0.995)          # q_a, q_b of each raw map over all pixels of the good validation images
MAX_QUANTILE_VALUES = 1 << 24     # more pixels per map than this are subsampled (seeded) before the quantiles
NORM_SCALE = 0.1                  # norm(q_a) = 0, norm(q_b) = 0.1
MAP_MIX = 0.5                     # weight of each normalised map in the combination
BOTH_MAPS = (MAP_MIX, MAP_MIX)    # the default ``map_mix`` of a model: (weight of norm(map_L), of norm(map_G))


@torch.no_grad()
def teacher_statistics(outputs: Callable[[], Iterable[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean (mean of per-image spatial means) and std (from the mean squared deviation from that
    mean), as EfficientAD defines them.

    ``outputs()`` yields the raw teacher output of each training image; it is iterated once: the squared
    deviation is E[t²] − mean², with both moments accumulated in float64 (the same values as a second pass
    over the outputs, at half the teacher work when the outputs are not kept).
    """
    first = second = None
    count = 0
    for t in outputs():
        t = t.double()
        m1, m2 = t.mean(dim=(0, 2, 3)), (t * t).mean(dim=(0, 2, 3))
        first, second = (m1, m2) if first is None else (first + m1, second + m2)
        count += 1
    if count == 0:
        raise ValueError("no teacher output to compute the channel statistics on")
    mean = first / count
    var = (second / count - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def map_quantiles(maps: Sequence[torch.Tensor], rng: np.random.Generator,
                  max_values: int = MAX_QUANTILE_VALUES) -> tuple[float, float]:
    """(q_a, q_b) over every pixel of ``maps`` (float64, linear interpolation); more than ``max_values``
    pixels are subsampled uniformly with ``rng`` first."""
    flat = torch.cat([m.reshape(-1).float().cpu() for m in maps]).numpy().astype(np.float64)
    if flat.size > max_values:
        flat = flat[rng.choice(flat.size, size=max_values, replace=False)]
    qa, qb = np.quantile(flat, QUANTILES)
    return float(qa), float(qb)


def _check_finite_maps(map_l: torch.Tensor, map_g: torch.Tensor, names: Sequence[str]) -> None:
    for j, name in enumerate(names):
        for which, m in (("map_l", map_l), ("map_g", map_g)):
            if not bool(torch.isfinite(m[j]).all()):
                raise ValueError(f"the raw {which} of {name} is not finite (NaN or inf): the model's weights or "
                                 "the image are broken, so no map normalisation can be fitted")


def _good_raw_maps(model, batches: Iterable[tuple[torch.Tensor, Sequence[str]]]
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """The raw maps of every batch (fp32, CPU), checked finite, and the number of images."""
    maps_l, maps_g, count = [], [], 0
    for images, names in batches:
        map_l, map_g = model.raw_maps(images)
        _check_finite_maps(map_l, map_g, names)
        maps_l.append(map_l.float().cpu())
        maps_g.append(map_g.float().cpu())
        count += images.shape[0]
    return maps_l, maps_g, count


def cell_statistics(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell (mean, std + floor) of normalised maps (n, 1, h, w) of n >= 2 good images, in float64, each
    returned as (1, 1, h, w) fp32; the floor added to every std is the median std over the cells."""
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"cell statistics need maps (n, 1, h, w), got {tuple(maps.shape)}")
    n = maps.shape[0]
    if n < 2:
        raise ValueError(f"per-cell map statistics need at least 2 good validation images, got {n}: add good "
                         "images to the validation split or turn cell_norm off")
    m = maps.double()
    mean = m.mean(0, keepdim=True)
    std = ((m - mean) ** 2).mean(0, keepdim=True).sqrt()
    floor = float(np.median(std.cpu().numpy()))  # the mean of the two middle values for an even count
    if not (np.isfinite(floor) and bool(torch.isfinite(mean).all())):
        raise ValueError("the per-cell map statistics are not finite (NaN or inf): the normalised validation "
                         "maps overflow, so the model's weights or quantiles are broken")
    if not floor > 0:
        raise ValueError(f"the per-cell map statistics are degenerate: the {n} good validation maps agree at "
                         "more than half of the cells (median std 0), so no per-cell scale can be fitted")
    return mean.float(), (std + floor).float()


def _fit_cells(model, maps_l: Sequence[torch.Tensor], maps_g: Sequence[torch.Tensor], count: int) -> dict:
    """Per-cell statistics of the model's quantile-normalised combined maps, stored with
    ``model.set_cell_statistics``; returns a summary."""
    if count == 0:
        raise ValueError("no good image to fit the per-cell map statistics on")
    sizes = {tuple(m.shape[-2:]) for m in maps_l}
    if len(sizes) != 1:
        raise ValueError(f"per-cell map statistics need maps of one size (images of one size), got {sorted(sizes)}")
    mean, std = cell_statistics(normalise_maps(torch.cat(list(maps_l)), torch.cat(list(maps_g)),
                                               model.map_weights()))
    model.set_cell_statistics(mean, std)
    return {"num_images": count, "cells": list(mean.shape[-2:])}


@torch.no_grad()
def fit_quantiles_on(model, batches: Iterable[tuple[torch.Tensor, Sequence[str]]], *, seed: int = 0,
                     max_values: int = MAX_QUANTILE_VALUES) -> dict:
    """Fit the map quantiles of ``model`` on image batches of GOOD images and store them.

    ``model`` has ``raw_maps(images) -> (map_l, map_g)`` and ``set_quantiles(qa_l, qb_l, qa_g, qb_g)``
    (DHKD and the EfficientAD-M peer); ``batches`` yields (images on the model's device, image names).
    Returns the quantiles and the number of images. Non-finite or constant maps are errors. A map that the
    model's ``map_mix`` (default :data:`BOTH_MAPS`) weights 0 is not fitted: its quantiles are stored as (0, 0).
    A model with ``cell_norm`` true also gets its per-cell statistics, from the same maps right after the
    quantiles (as :func:`fit_cell_statistics`; the summary under ``"cell_statistics"``), so a refit of the
    quantiles never leaves statistics of the old normalisation behind.
    """
    mix = tuple(getattr(model, "map_mix", BOTH_MAPS))
    maps_l, maps_g, count = _good_raw_maps(model, batches)
    if count == 0:
        raise ValueError("no good image to fit the map quantiles on")
    rng = np.random.default_rng(seed)
    qa_l, qb_l = map_quantiles(maps_l, rng, max_values) if mix[0] else (0.0, 0.0)
    qa_g, qb_g = map_quantiles(maps_g, rng, max_values) if mix[1] else (0.0, 0.0)
    for name, (qa, qb), weight in (("map_l", (qa_l, qb_l), mix[0]), ("map_g", (qa_g, qb_g), mix[1])):
        if weight and not qb > qa:
            raise ValueError(f"{name} quantiles are degenerate (q{QUANTILES[0]} = {qa}, q{QUANTILES[1]} = {qb}): "
                             "the map is constant on the validation images")
    model.set_quantiles(qa_l, qb_l, qa_g, qb_g)
    out = {"qa_l": qa_l, "qb_l": qb_l, "qa_g": qa_g, "qb_g": qb_g, "num_images": count}
    if getattr(model, "cell_norm", False):
        out["cell_statistics"] = _fit_cells(model, maps_l, maps_g, count)
    return out


def dataset_batches(dataset, indices: Sequence[int] | None = None, *, batch_size: int = 8, num_workers: int = 0,
                    progress: Callable[[Iterable, int, str], Iterable] | None = None, desc: str = "images"
                    ) -> Iterator[list[dict]]:
    """Lists of dataset items (``dataset[i]`` dicts), ``batch_size`` at a time, in order; only ``indices``
    when given. ``progress(iterable, total, desc)`` wraps the iteration (e.g. a progress bar)."""
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=list)
    return iter(progress(loader, len(loader), desc) if progress is not None else loader)


def model_device(model, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU for parameter-less models)."""
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _good_batches(model, dataset, *, batch_size: int, device, num_workers: int,
                  progress: Callable[[Iterable, int, str], Iterable] | None, what: str
                  ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(images on the model's device, names) of the GOOD images of ``dataset``, ``batch_size`` at a time (each
    window of an image cut into windows is one image here, named after its file)."""
    good = [i for i, s in enumerate(dataset.samples) if s.label == 0]
    if not good:
        raise ValueError(f"{dataset!r} has no good image to fit the {what} on")
    check_same_input_mode(model, dataset)
    device = model_device(model, device)
    return (_inputs_and_names(batch, device)
            for batch in dataset_batches(dataset, good, batch_size=batch_size, num_workers=num_workers,
                                         progress=progress, desc="calibrate"))


def _inputs_and_names(batch: list[dict], device) -> tuple[torch.Tensor, list[str]]:
    x, counts = batch_windows(batch)  # an image cut into windows gives one map per window
    return x.to(device), [it["path"] for it, n in zip(batch, counts) for _ in range(n)]


@torch.no_grad()
def fit_quantiles(model, dataset, *, batch_size: int = 8, device=None, seed: int = 0,
                  max_values: int = MAX_QUANTILE_VALUES, num_workers: int = 0,
                  progress: Callable[[Iterable, int, str], Iterable] | None = None) -> dict:
    """Fit q_a = 0.9 and q_b = 0.995 over all pixels of each raw map on the GOOD images of ``dataset`` (the
    validation split, never test images), store them with ``model.set_quantiles`` and return them.
    More than ``max_values`` pixels per map are subsampled uniformly (seeded) first. A ``cell_norm`` model
    gets its per-cell statistics from the same maps (see :func:`fit_quantiles_on`)."""
    batches = _good_batches(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                            progress=progress, what="map quantiles")
    return fit_quantiles_on(model, batches, seed=seed, max_values=max_values)


@torch.no_grad()
def fit_cell_statistics(model, dataset, *, batch_size: int = 8, device=None, num_workers: int = 0,
                        progress: Callable[[Iterable, int, str], Iterable] | None = None) -> dict:
    """Fit only the per-cell statistics of a ``cell_norm`` model whose quantiles are already fitted, on the
    GOOD images of ``dataset`` (the validation split, at the model's image size): per cell, the mean and
    std (+ the median std as a floor) of the quantile-normalised combined map before any smoothing, stored
    with ``model.set_cell_statistics``. Returns a summary. :func:`fit_quantiles` calls this part itself."""
    if not getattr(model, "cell_norm", False):
        raise ValueError("the model has no per-cell normalisation (its config has cell_norm=False)")
    model.map_weights()  # the quantiles must be fitted first (a clear error otherwise)
    batches = _good_batches(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                            progress=progress, what="per-cell map statistics")
    return _fit_cells(model, *_good_raw_maps(model, batches))


def normalisation_weights(quantiles: Sequence[float] | torch.Tensor,
                          mix: Sequence[float] = BOTH_MAPS) -> tuple[float, float, float]:
    """(w_L, w_G, c) of ``map = w_L·map_L + w_G·map_G + c`` from (q_a,L, q_b,L, q_a,G, q_b,G), in float64.

    ``mix`` weights the two normalised maps (default 0.5 each); a map weighted 0 gets w = 0 and its quantiles
    are not used (nor checked)."""
    if isinstance(quantiles, torch.Tensor):
        quantiles = quantiles.double().tolist()
    qa_l, qb_l, qa_g, qb_g = (float(q) for q in quantiles)
    mix_l, mix_g = (float(m) for m in mix)
    if not (mix_l >= 0 and mix_g >= 0 and mix_l + mix_g > 0):
        raise ValueError(f"map mix weights must be >= 0 and not both 0, got {tuple(mix)}")
    bad = [f"{name} ({qa}, {qb})" for name, qa, qb, m in (("L", qa_l, qb_l, mix_l), ("G", qa_g, qb_g, mix_g))
           if m and not qb > qa]
    if bad:
        raise ValueError(f"map quantiles must satisfy qa < qb, got {', '.join(bad)}")
    w_l = mix_l * NORM_SCALE / (qb_l - qa_l) if mix_l else 0.0
    w_g = mix_g * NORM_SCALE / (qb_g - qa_g) if mix_g else 0.0
    return w_l, w_g, -(w_l * qa_l + w_g * qa_g)


def normalise_maps(map_l: torch.Tensor, map_g: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """The combined, normalised map ``w_L·map_L + w_G·map_G + c`` in fp32 (same shape as the inputs)."""
    w_l, w_g, c = weights
    return w_l * map_l.float() + w_g * map_g.float() + c
