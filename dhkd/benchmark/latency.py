"""Latency benchmark of DHKD against its peers, with ratios measured in one interleaved run.

Per preset: batch-1 latency at the model's image size (256² for ``paper``/``small``) in every selected mode,
for DHKD with the ``dhkd_kernels`` backends, the same DHKD on the plain-PyTorch ``reference`` path, and
EfficientAD-M; batch-N throughput; map agreement of every reduced-precision or compiled mode with the fp32
eager maps; the SS2D time of one forward; the backend each op used. The timed region is EfficientAD's:
host tensor → device → detector → anomaly map and score on the host (see ``docs/deployment.md``).

This module runs the phases; :mod:`.config` holds the settings and flags, :mod:`.environment` what is
recorded about the machine, :mod:`.report` the ratios, targets and table, :mod:`.measure` the timers.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dhkd.allocator import keep_freed_memory
from dhkd.models.calibration import fit_quantiles_on
from dhkd.runtime import AnomalyDetector, pick_device
from dhkd.runtime.modes import MODES, Runner

from .config import DHKD, EFFICIENTAD, REFERENCE, SCHEMA, BenchmarkConfig, config_from_args, settings
from .efficientad import EfficientADM
from .environment import environment, op_backends
from .measure import agreement, conv_time, run_images, ss2d_time, summarize, synthetic_images, time_interleaved
from .report import format_report, ratios, results_path, targets, variant


def _load_model(path: str):
    from dhkd.persistence import load_model

    p = Path(path)
    return load_model(p / "model.safetensors" if p.is_dir() else p)


def _calibration_batches(images: torch.Tensor):
    return [(images, [f"synthetic image {i}" for i in range(images.shape[0])])]


@torch.no_grad()
def build_detector(preset: str, model_path: str | None, calib: torch.Tensor, seed: int) -> AnomalyDetector:
    """An AnomalyDetector of random weights (quantiles fitted on ``calib``) or of a trained model file."""
    from dhkd.models import DHKD as DHKDModel

    if model_path is not None:
        return AnomalyDetector(_load_model(model_path))
    torch.manual_seed(seed)
    model = DHKDModel.from_preset(preset).eval()
    fit_quantiles_on(model, _calibration_batches(calib), seed=seed)
    return AnomalyDetector(model)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _image_size(preset: str, cfg: BenchmarkConfig) -> int:
    from dhkd.models import preset as get_preset

    return _load_model(cfg.model).image_size if cfg.model is not None else get_preset(preset).image_size


def _models(preset: str, cfg: BenchmarkConfig, st: dict, images: torch.Tensor) -> dict:
    """name -> (module, forced backend, modes) of DHKD and the selected peers."""
    detector = build_detector(preset, cfg.model, images, cfg.seed)
    models = {DHKD: (detector, None, st["modes"])}
    if REFERENCE in st["peers"]:
        models[REFERENCE] = (detector, "reference", st["reference_modes"])
    if EFFICIENTAD in st["peers"]:
        torch.manual_seed(cfg.seed)
        ead = EfficientADM(images.shape[-1])
        fit_quantiles_on(ead, _calibration_batches(images), seed=cfg.seed)
        models[EFFICIENTAD] = (ead, None, st["modes"])
    return models


def _runners(models: dict, device: torch.device, modes_of) -> dict[str, Runner]:
    return {variant(model, mode): Runner(module, MODES[mode], device, backend)
            for model, (module, backend, modes) in models.items() for mode in modes_of(model, modes)}


def _latency(runners: dict[str, Runner], one: torch.Tensor, st: dict, seed: int, log) -> dict:
    """Batch-1 latency of every variant, all interleaved (first-call time recorded apart)."""
    size = one.shape[-1]
    for name, r in runners.items():
        log(f"  first call of {name} ...")
        t0 = time.perf_counter()
        r(one)
        r.first_call_s = time.perf_counter() - t0
    log(f"  timing {len(runners)} variants × {st['repeats']} interleaved rounds")
    g = torch.Generator().manual_seed(seed + 1)
    times = time_interleaved(runners, lambda: torch.randn(1, 3, size, size, generator=g), st["warmup"], st["repeats"])
    return {name: {"model": name.split("[")[0], "mode": r.mode.name, "backend": r.backend or "auto",
                   "first_call_s": r.first_call_s, **summarize(times[name])} for name, r in runners.items()}


def _agreement(runners: dict[str, Runner], models: dict, images: torch.Tensor) -> dict:
    """Map and score agreement of each variant with the fp32 eager run of the same model (DHKD's kernels path
    for both DHKD rows)."""
    ref = {m: run_images(runners[variant(m, "eager")], images) for m in models if m != REFERENCE}
    out = {}
    for name, r in runners.items():
        if name in (variant(DHKD, "eager"), variant(EFFICIENTAD, "eager")):
            continue
        maps, scores = run_images(r, images)
        out[name] = agreement(maps, scores, *ref[EFFICIENTAD if name.startswith(EFFICIENTAD) else DHKD])
    return out


def _forward_breakdown(runners: dict[str, Runner], one: torch.Tensor, device: torch.device) -> tuple[dict, dict]:
    """The SS2D time of one forward (eager modes: hooks do not fire inside compiled graphs) and, on the CPU,
    the convolution share of one forward (uncompiled modes): the floor a mode cannot go below."""
    ss2d, conv = {}, {}
    for name, r in runners.items():
        if r.mode.compile:
            continue
        if not r.mode.cuda_graph and not name.startswith(EFFICIENTAD):
            res = ss2d_time(r.module, r.prepare(one), r.backend, repeats=3)
            if res is not None:
                ss2d[name] = res
        if device.type == "cpu":
            conv[name] = conv_time(r.module, r.prepare(one), r.backend)
    return ss2d, conv


def _throughput(models: dict, device: torch.device, st: dict, size: int, seed: int, log) -> dict:
    """Batch-N throughput of the throughput modes, interleaved."""
    bsz = st["throughput_batch"]
    if bsz <= 0 or not st["throughput_modes"]:
        return {}
    tp = _runners(models, device, lambda model, modes: [m for m in st["throughput_modes"]
                                                        if model != REFERENCE and m in modes])
    log(f"  throughput at batch {bsz}: {len(tp)} variants × {st['throughput_repeats']} rounds")
    g = torch.Generator().manual_seed(seed + 2)
    tt = time_interleaved(tp, lambda: torch.randn(bsz, 3, size, size, generator=g), 1, st["throughput_repeats"])
    out = {}
    for name, r in tp.items():
        s = summarize(tt[name])
        out[name] = {"model": name.split("[")[0], "mode": r.mode.name, "batch": bsz,
                     "images_per_s": bsz * 1e3 / s["median_ms"], **s}
    return out


def benchmark_preset(preset: str, cfg: BenchmarkConfig, st: dict, device: torch.device, log=print) -> dict:
    """Every measurement of one preset: latency, agreement, SS2D and convolution times, throughput, ratios."""
    images = synthetic_images(st["agreement_images"], _image_size(preset, cfg), seed=cfg.seed)
    size = images.shape[-1]
    models = _models(preset, cfg, st, images)
    out = {"image_size": size,
           "params": {m: _params(mod) for m, (mod, _, _) in models.items() if m != REFERENCE},
           "backends": {m: op_backends(device, b) for m, (_, b, _) in models.items() if m != EFFICIENTAD}}
    runners = _runners(models, device, lambda model, modes: modes)
    one = images[:1]
    log(f"  [{preset}] batch-1 latency")
    out["latency"] = _latency(runners, one, st, cfg.seed, log)
    log(f"  [{preset}] map agreement on {images.shape[0]} synthetic images")
    out["agreement"] = _agreement(runners, models, images)
    out["ss2d"], out["conv"] = _forward_breakdown(runners, one, device)
    del runners
    out["throughput"] = _throughput(models, device, st, size, cfg.seed, log)
    out["ratios"] = ratios(out["latency"], st["modes"], out["conv"])
    out["targets"] = targets(preset, out, device)
    return out


def run_benchmark(cfg: BenchmarkConfig, log=print) -> dict:
    """Run the benchmark described by ``cfg``; ``cfg.threads`` applies for the run only."""
    heap_reuse = keep_freed_memory()  # large activations reuse freed memory instead of page-faulting anew
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = pick_device(cfg.device)
        st = settings(cfg, device)
        result = {"schema": SCHEMA, "environment": {**environment(device, cfg), "freed_memory_kept": heap_reuse},
                  "settings": st, "config": asdict(cfg), "presets": {}}
        for preset in cfg.presets:
            log(f"preset {preset}: modes {', '.join(st['modes'])}")
            result["presets"][preset] = benchmark_preset(preset, cfg, st, device, log)
    finally:
        torch.set_num_threads(threads)
    result["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def main(args: argparse.Namespace) -> int:
    """``dhkd benchmark``: run, print the table and write the JSON (unless ``--no-save``)."""
    from dhkd.persistence import atomic_write_json

    result = run_benchmark(config_from_args(args))
    print(format_report(result))
    if not args.no_save:
        path = results_path(result, args.output_dir)
        atomic_write_json(path, result)
        print(f"\nwrote {path}")
    return 0
