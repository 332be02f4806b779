"""Measurements: interleaved timing, summary statistics, map agreement, SS2D time of one forward."""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

import dhkd_kernels
from dhkd.models.ss2d import SS2D


def synthetic_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` ImageNet-normalised-looking images (n, 3, size, size): smooth random backgrounds, every other
    one with a bright or dark square "defect", so image scores differ and their ranking means something."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, max(2, size // 16), max(2, size // 16), generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.2 * torch.randn(n, 3, size, size, generator=g)
    for i in range(1, n, 2):
        side = max(2, size // 8 + i)
        r, c = (torch.randint(0, size - side, (2,), generator=g)).tolist()
        x[i, :, r:r + side, c:c + side] += 2.0 if i % 4 == 1 else -2.0
    return x


def summarize(seconds: list[float]) -> dict:
    """median, p90, mean, min in milliseconds and the sample count."""
    ms = sorted(1e3 * s for s in seconds)
    p90 = ms[min(len(ms) - 1, max(0, math.ceil(0.9 * len(ms)) - 1))]
    return {"median_ms": statistics.median(ms), "p90_ms": p90, "mean_ms": statistics.fmean(ms),
            "min_ms": ms[0], "n": len(ms)}


def time_interleaved(runners: dict[str, Callable[[torch.Tensor], object]], make_input: Callable[[], torch.Tensor],
                     warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time every runner ``warmup + repeats`` times, one call each per round (A B C A B C …) with the order
    rotated every round, so drifting load on a shared machine hits all of them alike. The input is created
    on the host outside the timed region; each runner returns host tensors, which synchronises a GPU.
    The first ``warmup`` rounds are dropped."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            x = make_input()
            t0 = time.perf_counter()
            runners[name](x)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def agreement(maps: torch.Tensor, scores: torch.Tensor, ref_maps: torch.Tensor, ref_scores: torch.Tensor) -> dict:
    """How well maps/scores of one mode agree with the fp32 eager ones of the same model.

    max/mean absolute map difference, the reference map's value range (for scale), Pearson r over all map
    pixels, Spearman ρ of the image scores and whether the image ranking is identical.
    """
    a, b = maps.double().flatten().numpy(), ref_maps.double().flatten().numpy()
    diff = np.abs(a - b)
    pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    s, rs = scores.double().numpy(), ref_scores.double().numpy()
    spearman = float(sps.spearmanr(s, rs).statistic) if len(s) > 1 else float("nan")
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "ref_map_range": float(b.max() - b.min()), "pearson_r": pearson, "score_spearman": spearman,
            "same_ranking": bool((np.argsort(s, kind="stable") == np.argsort(rs, kind="stable")).all()),
            "max_score_diff": float(np.abs(s - rs).max()), "images": int(len(s))}


def run_images(runner: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
               images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps and scores of ``images`` one at a time (runners are built for batch 1)."""
    outs = [runner(images[i:i + 1]) for i in range(images.shape[0])]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def ss2d_time(module: nn.Module, x: torch.Tensor, backend: str | None, repeats: int = 3) -> dict | None:
    """SS2D share of one eager forward of ``module`` on ``x`` (already on its device and dtype).

    ``module_ms``: the SS2D modules (projections, depth-wise conv, scan, norm, gate), timed with forward
    hooks, summed per forward, median over ``repeats`` forwards. ``scan_op_ms``: the ``dhkd::ss2d_scan``
    op alone from a profiler record (None on the reference path, which is plain PyTorch ops).
    """
    blocks = [m for m in module.modules() if isinstance(m, SS2D)]
    if not blocks:
        return None
    cuda = x.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    starts: dict[int, float] = {}
    total = [0.0]

    def pre(mod, args):
        sync()
        starts[id(mod)] = time.perf_counter()

    def post(mod, args, out):
        sync()
        total[0] += time.perf_counter() - starts.pop(id(mod))

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(pre), b.register_forward_hook(post))]
    per_forward = []
    try:
        with torch.no_grad(), dhkd_kernels.use_backend(backend):
            module(x)  # warm-up
            for _ in range(repeats):
                total[0] = 0.0
                module(x)
                per_forward.append(total[0])
    finally:
        for h in handles:
            h.remove()
    scan = [e for e in _profiled_forward(module, x, backend) if e.key == "dhkd::ss2d_scan"]
    scan_ms = None
    if scan:
        ev = scan[0]
        us = getattr(ev, "device_time_total", 0.0) if cuda else ev.cpu_time_total
        scan_ms = us / 1e3
    return {"module_ms": 1e3 * statistics.median(per_forward), "scan_op_ms": scan_ms, "calls": len(blocks)}


def _profiled_forward(module: nn.Module, x: torch.Tensor, backend: str | None):
    """Profiler events (key averages) of one forward of ``module`` on ``x``, GPU activity included on a GPU."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if x.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), dhkd_kernels.use_backend(backend), torch.profiler.profile(activities=activities) as prof:
        module(x)
    return prof.key_averages()


def conv_time(module: nn.Module, x: torch.Tensor, backend: str | None) -> dict:
    """Convolution share of one eager CPU forward of ``module`` on ``x``, from a profiler record.

    ``conv_ms``: self time of the library's convolution kernels (every ``*convolution*`` op; on a CPU these
    are oneDNN's); ``total_ms``: self time of all ops of the forward. At equal convolution speed no mode of a
    model can beat another model whose whole forward takes less than the first one's convolutions alone.
    """
    with torch.no_grad(), dhkd_kernels.use_backend(backend):
        module(x)  # warm-up (oneDNN primitive creation)
    events = _profiled_forward(module, x, backend)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key and "backward" not in e.key)
    total = sum(e.self_cpu_time_total for e in events)
    return {"conv_ms": conv / 1e3, "total_ms": total / 1e3, "conv_share": conv / total if total else float("nan")}
