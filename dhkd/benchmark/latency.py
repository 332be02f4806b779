"""Latency benchmark of DHKD against its peers, with ratios measured in one interleaved run.

Per preset: batch-1 latency at the model's image size (256² for ``paper``/``small``) in every selected mode,
for DHKD with the ``dhkd_kernels`` backends, the same DHKD on the plain-PyTorch ``reference`` path, and
EfficientAD-M; batch-N throughput; map agreement of every reduced-precision or compiled mode with the fp32
eager maps; the SS2D time of one forward; the backend each op used. The timed region is EfficientAD's:
host tensor → device → detector → anomaly map and score on the host (see ``docs/deployment.md``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import dhkd_kernels
from dhkd.allocator import keep_freed_memory
from dhkd_kernels import _registry

from .efficientad import EfficientADM
from .measure import agreement, conv_time, run_images, ss2d_time, summarize, synthetic_images, time_interleaved
from .modes import MODES, Runner, cpu_flags, native_cpu_dtypes, unsupported_reason

SCHEMA = "dhkd-latency/1"
PAPER_MS, GPU_AIM_MS, CPU_SS2D_MS = 7.6, 2.0, 15.0
DHKD, REFERENCE, EFFICIENTAD = "dhkd", "dhkd-reference", "efficientad-m"
TIMED_REGION = ("host tensor -> device -> detector (teacher, student, decoders, folded normalisation, "
                "bilinear resize to the input size, max score) -> map and score on the host")


@dataclass
class BenchmarkConfig:
    presets: list[str] = field(default_factory=lambda: ["paper"])
    modes: list[str] | None = None             # None: every mode this device supports
    device: str = "auto"
    warmup: int | None = None                  # None: by device and --quick
    repeats: int | None = None
    throughput_batch: int = 16
    throughput_modes: list[str] | None = None  # None: eager (CPU) / the uncompiled modes (GPU)
    throughput_repeats: int | None = None
    reference_modes: list[str] = field(default_factory=lambda: ["eager"])
    peers: list[str] = field(default_factory=lambda: [REFERENCE, EFFICIENTAD])
    agreement_images: int | None = None
    model: str | None = None                   # a trained model file/run instead of random weights
    threads: int | None = None
    quick: bool = False
    shared_machine: bool = False
    note: str = ""
    seed: int = 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return device


def default_modes(device: torch.device) -> list[str]:
    names = (["eager", "channels_last", "compile", "bf16", "bf16-compile", "fp16", "fp16-compile"]
             if device.type == "cpu" else
             ["eager", "cudagraph", "fp16", "fp16-compile", "fp16-cudagraph", "bf16"])
    return [n for n in names if unsupported_reason(MODES[n], device) is None]


def _settings(cfg: BenchmarkConfig, device: torch.device) -> dict:
    gpu = device.type == "cuda"
    warmup = cfg.warmup if cfg.warmup is not None else (20 if gpu else 1) if cfg.quick else (200 if gpu else 5)
    repeats = cfg.repeats if cfg.repeats is not None else (50 if gpu else 5) if cfg.quick else (1000 if gpu else 20)
    modes = list(cfg.modes) if cfg.modes is not None else default_modes(device)
    for name in modes + list(cfg.reference_modes) + list(cfg.throughput_modes or []):
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; available: {sorted(MODES)}")
    if "eager" not in modes:
        modes.insert(0, "eager")  # the baseline of the agreement numbers
    skipped = {n: unsupported_reason(MODES[n], device) for n in modes if unsupported_reason(MODES[n], device)}
    modes = [n for n in modes if n not in skipped]
    tp_modes = cfg.throughput_modes if cfg.throughput_modes is not None else (
        [n for n in modes if not MODES[n].compile] if gpu else ["eager"])
    for peer in cfg.peers:
        if peer not in (REFERENCE, EFFICIENTAD):
            raise ValueError(f"unknown peer {peer!r}; expected {REFERENCE!r} or {EFFICIENTAD!r}")
    return {"warmup": warmup, "repeats": repeats, "modes": modes, "skipped_modes": skipped,
            "throughput_batch": cfg.throughput_batch, "throughput_modes": [n for n in tp_modes if n in modes],
            "throughput_repeats": cfg.throughput_repeats or (2 if cfg.quick else 5),
            "reference_modes": [n for n in cfg.reference_modes if n in modes],
            "agreement_images": cfg.agreement_images or (4 if cfg.quick else 8),
            "peers": list(cfg.peers), "quick": cfg.quick, "seed": cfg.seed, "timed_region": TIMED_REGION}


def environment(device: torch.device, cfg: BenchmarkConfig) -> dict:
    flags = cpu_flags()
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"host": socket.gethostname(), "date": dt.datetime.now().isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "cpu": cpu_model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_cpu_dtypes": native_cpu_dtypes(),
           "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                                        "avx512_vnni", "avx_vnni"}),
           "mkldnn": torch.backends.mkldnn.is_available(),
           "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "shared_machine": cfg.shared_machine, "note": cfg.note}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    return env


def op_backends(device: torch.device, backend: str | None) -> dict[str, str]:
    """Which backend each dhkd_kernels op runs on ``device`` under ``use_backend(backend)``."""
    with dhkd_kernels.use_backend(backend):
        return {op: _registry.choose(op, device) for op in _registry.ops()}


@torch.no_grad()
def build_detector(preset: str, model_path: str | None, calib: torch.Tensor, seed: int):
    """An AnomalyDetector of random weights (quantiles fitted on ``calib``) or of a trained model file."""
    from dhkd.inference import AnomalyDetector
    from dhkd.models import DHKD

    if model_path is not None:
        from dhkd.persistence import load_model

        path = Path(model_path)
        return AnomalyDetector(load_model(path / "model.safetensors" if path.is_dir() else path))
    torch.manual_seed(seed)
    model = DHKD.from_preset(preset).eval()
    map_l, map_g = model.raw_maps(calib)
    qs = [float(torch.quantile(m.flatten(), q)) for m in (map_l, map_g) for q in (0.9, 0.995)]
    model.set_quantiles(*qs)
    return AnomalyDetector(model)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _variant(model: str, mode: str) -> str:
    return f"{model}[{mode}]"


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return a["median_ms"] / b["median_ms"] if a and b else None


def _best(latency: dict, model: str) -> tuple[str, dict] | None:
    rows = [(v["mode"], v) for v in latency.values() if v["model"] == model]
    return min(rows, key=lambda r: r[1]["median_ms"]) if rows else None


def benchmark_preset(preset: str, cfg: BenchmarkConfig, settings: dict, device: torch.device,
                     log=print) -> dict:
    images = synthetic_images(settings["agreement_images"], _image_size(preset, cfg), seed=cfg.seed)
    size = images.shape[-1]
    detector = build_detector(preset, cfg.model, images, cfg.seed)
    models = {DHKD: (detector, None, settings["modes"])}
    if REFERENCE in settings["peers"]:
        models[REFERENCE] = (detector, "reference", settings["reference_modes"])
    if EFFICIENTAD in settings["peers"]:
        torch.manual_seed(cfg.seed)
        ead = EfficientADM(size)
        ead.fit_quantiles(images)
        models[EFFICIENTAD] = (ead, None, settings["modes"])
    out = {"image_size": size, "params": {m: _params(mod) for m, (mod, _, _) in models.items()
                                          if m != REFERENCE},
           "backends": {m: op_backends(device, b) for m, (_, b, _) in models.items() if m != EFFICIENTAD},
           "latency": {}, "agreement": {}, "ss2d": {}, "conv": {}, "throughput": {}}

    def build(modes_of) -> dict[str, Runner]:
        runners = {}
        for model, (module, backend, modes) in models.items():
            for mode in modes_of(model, modes):
                runners[_variant(model, mode)] = Runner(module, MODES[mode], device, backend)
        return runners

    # ---- batch-1 latency, all variants interleaved
    runners = build(lambda model, modes: modes)
    one = images[:1]
    for name, r in runners.items():
        log(f"  [{preset}] first call of {name} ...")
        t0 = time.perf_counter()
        r(one)
        r.first_call_s = time.perf_counter() - t0
    log(f"  [{preset}] timing {len(runners)} variants × {settings['repeats']} interleaved rounds")
    g = torch.Generator().manual_seed(cfg.seed + 1)
    times = time_interleaved(runners, lambda: torch.randn(1, 3, size, size, generator=g),
                             settings["warmup"], settings["repeats"])
    for name, r in runners.items():
        model = name.split("[")[0]
        out["latency"][name] = {"model": model, "mode": r.mode.name, "backend": r.backend or "auto",
                                "first_call_s": r.first_call_s, **summarize(times[name])}

    # ---- agreement with the fp32 eager maps of the same model (DHKD's kernels path for both DHKD rows)
    log(f"  [{preset}] map agreement on {images.shape[0]} synthetic images")
    ref = {m: run_images(runners[_variant(m, "eager")], images) for m in models if m != REFERENCE}
    for name, r in runners.items():
        model = name.split("[")[0]
        if name in (_variant(DHKD, "eager"), _variant(EFFICIENTAD, "eager")):
            continue
        maps, scores = run_images(r, images)
        out["agreement"][name] = agreement(maps, scores, *ref[EFFICIENTAD if model == EFFICIENTAD else DHKD])

    # ---- SS2D time of one forward (eager modes only: hooks do not fire inside compiled graphs)
    for name, r in runners.items():
        if r.mode.compile or r.mode.cuda_graph or name.startswith(EFFICIENTAD):
            continue
        res = ss2d_time(r.module, r.prepare(one), r.backend, repeats=3)
        if res is not None:
            out["ss2d"][name] = res

    # ---- convolution share of one forward (CPU, uncompiled modes): the floor a model's mode cannot go below
    if device.type == "cpu":
        for name, r in runners.items():
            if not r.mode.compile:
                out["conv"][name] = conv_time(r.module, r.prepare(one), r.backend)
    del runners

    # ---- batch-N throughput
    if settings["throughput_batch"] > 0 and settings["throughput_modes"]:
        bsz = settings["throughput_batch"]
        tp = build(lambda model, modes: [m for m in settings["throughput_modes"]
                                              if model != REFERENCE and m in modes])
        log(f"  [{preset}] throughput at batch {bsz}: {len(tp)} variants × {settings['throughput_repeats']} rounds")
        tt = time_interleaved(tp, lambda: torch.randn(bsz, 3, size, size, generator=g), 1,
                              settings["throughput_repeats"])
        for name, r in tp.items():
            s = summarize(tt[name])
            out["throughput"][name] = {"model": name.split("[")[0], "mode": r.mode.name, "batch": bsz,
                                       "images_per_s": bsz * 1e3 / s["median_ms"], **s}
    out["ratios"] = ratios(out["latency"], settings["modes"], out["conv"])
    out["targets"] = targets(preset, out, device)
    return out


def _image_size(preset: str, cfg: BenchmarkConfig) -> int:
    from dhkd.models import preset as get_preset

    if cfg.model is not None:
        from dhkd.persistence import load_model

        path = Path(cfg.model)
        return load_model(path / "model.safetensors" if path.is_dir() else path).image_size
    return get_preset(preset).image_size


def ratios(latency: dict, modes: list[str], conv: dict | None = None) -> dict:
    """DHKD / EfficientAD-M per mode and best/best; DHKD kernels / reference per mode (medians); with
    ``conv`` (per-variant convolution times) also DHKD's smallest convolution time over EfficientAD-M's best
    whole forward: above 1, no DHKD mode can reach EfficientAD-M's best at equal convolution speed."""
    get = latency.get
    res = {"dhkd_over_efficientad_m": {m: _ratio(get(_variant(DHKD, m)), get(_variant(EFFICIENTAD, m)))
                                       for m in modes if get(_variant(EFFICIENTAD, m))},
           "kernels_over_reference": {m: _ratio(get(_variant(DHKD, m)), get(_variant(REFERENCE, m)))
                                      for m in modes if get(_variant(REFERENCE, m))}}
    bd, be = _best(latency, DHKD), _best(latency, EFFICIENTAD)
    if bd and be:
        res["best_over_best"] = {"dhkd_mode": bd[0], "dhkd_ms": bd[1]["median_ms"], "efficientad_m_mode": be[0],
                                 "efficientad_m_ms": be[1]["median_ms"], "ratio": _ratio(bd[1], be[1])}
        convs = {n: c["conv_ms"] for n, c in (conv or {}).items() if n.startswith(DHKD + "[")}
        if convs:
            name = min(convs, key=convs.get)
            res["dhkd_convolutions_over_efficientad_m_best"] = {
                "variant": name, "conv_ms": convs[name], "efficientad_m_ms": be[1]["median_ms"],
                "ratio": convs[name] / be[1]["median_ms"]}
    return res


def targets(preset: str, out: dict, device: torch.device) -> dict:
    """The issue's targets for this preset and device, with the measured values and whether they are met."""
    bb = out["ratios"].get("best_over_best")
    best = _best(out["latency"], DHKD)
    res = {}
    if bb:
        res["best_over_best_le_1"] = {"value": bb["ratio"], "target": 1.0, "met": bb["ratio"] <= 1.0}
    if device.type == "cpu":
        ss = [v["module_ms"] for k, v in out["ss2d"].items() if k.startswith(DHKD + "[")]
        if ss:
            res["ss2d_ms_le_15"] = {"value": min(ss), "target": CPU_SS2D_MS, "met": min(ss) <= CPU_SS2D_MS}
    elif best and preset == "paper":
        ms = best[1]["median_ms"]
        res["paper_ms_le_7.6"] = {"value": ms, "target": PAPER_MS, "met": ms <= PAPER_MS}
        res["aim_ms_le_2.0"] = {"value": ms, "target": GPU_AIM_MS, "met": ms <= GPU_AIM_MS}
    return res


def run_benchmark(cfg: BenchmarkConfig, log=print) -> dict:
    """Run the benchmark described by ``cfg``; ``cfg.threads`` applies for the run only."""
    heap_reuse = keep_freed_memory()  # large activations reuse freed memory instead of page-faulting anew
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = pick_device(cfg.device)
        settings = _settings(cfg, device)
        result = {"schema": SCHEMA, "environment": {**environment(device, cfg), "freed_memory_kept": heap_reuse},
                  "settings": settings, "config": asdict(cfg), "presets": {}}
        for preset in cfg.presets:
            log(f"preset {preset}: modes {', '.join(settings['modes'])}")
            result["presets"][preset] = benchmark_preset(preset, cfg, settings, device, log)
    finally:
        torch.set_num_threads(threads)
    result["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_report(result: dict) -> str:
    """The on-screen table: latency, ratios, agreement, SS2D, throughput and targets per preset."""
    env, lines = result["environment"], []
    dev = env.get("gpu") or env["cpu"]
    lines.append(f"DHKD latency benchmark  {env['date']}  {env['host']}  {dev}  torch {env['torch']}  "
                 f"threads {env['torch_threads']}" + ("  (shared machine)" if env["shared_machine"] else ""))
    lines.append(f"timed: {result['settings']['timed_region']}")
    for preset, p in result["presets"].items():
        lines.append(f"\n== {preset} ({p['image_size']}², batch 1) ==")
        lines.append(f"{'variant':32s} {'median':>9s} {'p90':>9s} {'mean':>9s}  {'vs EAD-M':>8s}  "
                     f"{'max|Δmap|':>9s} {'r':>8s} {'ρ score':>7s}")
        for name, v in p["latency"].items():
            ratio = p["ratios"]["dhkd_over_efficientad_m"].get(v["mode"]) if v["model"] == DHKD else None
            a = p["agreement"].get(name, {})
            lines.append(f"{name:32s} {v['median_ms']:8.1f}ms {v['p90_ms']:8.1f}ms {v['mean_ms']:8.1f}ms  "
                         f"{_fmt(ratio, '.3f'):>8s}  {_fmt(a.get('max_abs_diff'), '.2e'):>9s} "
                         f"{_fmt(a.get('pearson_r'), '.6f'):>8s} {_fmt(a.get('score_spearman'), '.3f'):>7s}")
        bb = p["ratios"].get("best_over_best")
        if bb:
            lines.append(f"best/best: DHKD {bb['dhkd_mode']} {bb['dhkd_ms']:.1f} ms / EfficientAD-M "
                         f"{bb['efficientad_m_mode']} {bb['efficientad_m_ms']:.1f} ms = {bb['ratio']:.3f}")
        cb = p["ratios"].get("dhkd_convolutions_over_efficientad_m_best")
        if cb:
            lines.append(f"DHKD's convolutions alone ({cb['variant']}): {cb['conv_ms']:.1f} ms = {cb['ratio']:.3f} × "
                         f"EfficientAD-M's best whole forward")
        kr = p["ratios"]["kernels_over_reference"]
        if kr:
            lines.append("kernels/reference: " + ", ".join(f"{m} {r:.3f}" for m, r in kr.items()))
        for name, s in p["ss2d"].items():
            lines.append(f"SS2D in one forward, {name}: modules {s['module_ms']:.1f} ms, scan op "
                         f"{_fmt(s['scan_op_ms'])} ms ({s['calls']} calls)")
        for name, c in p["conv"].items():
            lines.append(f"convolutions in one forward, {name}: {c['conv_ms']:.1f} of {c['total_ms']:.1f} ms "
                         f"({100 * c['conv_share']:.0f} %)")
        for name, t in p["throughput"].items():
            lines.append(f"throughput {name} batch {t['batch']}: {t['images_per_s']:.2f} img/s "
                         f"(median {t['median_ms']:.0f} ms)")
        lines.append("backends: " + "; ".join(f"{m}: " + ", ".join(f"{op}={b}" for op, b in ob.items())
                                              for m, ob in p["backends"].items()))
        for name, t in p["targets"].items():
            lines.append(f"target {name}: {t['value']:.3f} vs {t['target']} -> {'MET' if t['met'] else 'missed'}")
        if env.get("gpu") and preset == "paper":
            best = _best(p["latency"], DHKD)
            lines.append(f"paper target: 7.6 ms per 256² image (A100); here best {best[0]} "
                         f"{best[1]['median_ms']:.2f} ms")
    skipped = result["settings"]["skipped_modes"]
    if skipped:
        lines.append("\nskipped modes: " + "; ".join(f"{m} ({r})" for m, r in skipped.items()))
    return "\n".join(lines)


def results_path(result: dict, directory: Path) -> Path:
    """``latency_<date>_<host>.json`` in ``directory``; ``_2``, ``_3``, … when that file already exists."""
    date = result["environment"]["date"][:10]
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in result["environment"]["host"])
    path, n = Path(directory) / f"latency_{date}_{host}.json", 2
    while path.exists():
        path, n = Path(directory) / f"latency_{date}_{host}_{n}.json", n + 1
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["paper"], help="model presets to benchmark")
    parser.add_argument("--modes", nargs="+", default=None,
                        help=f"execution modes (default: all this device supports); from {sorted(MODES)}")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run, still interleaved)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default by device, --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default by device, --quick)")
    parser.add_argument("--throughput-batch", type=int, default=16, help="batch for throughput; 0 = skip")
    parser.add_argument("--throughput-modes", nargs="+", default=None,
                        help="modes for throughput (default: eager on CPU, the uncompiled modes on GPU)")
    parser.add_argument("--throughput-repeats", type=int, default=None)
    parser.add_argument("--reference-modes", nargs="+", default=["eager"],
                        help="modes for the DHKD reference-path peer")
    parser.add_argument("--peers", nargs="*", default=[REFERENCE, EFFICIENTAD],
                        help=f"peers timed in the same run: {REFERENCE}, {EFFICIENTAD} (none: no peers)")
    parser.add_argument("--agreement-images", type=int, default=None)
    parser.add_argument("--model", default=None, help="a trained model (file or run folder) instead of random "
                                                       "weights; its image size is used")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--shared-machine", action="store_true",
                        help="record that other jobs shared the machine during the run")
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"),
                        help="where latency_<date>_<host>.json is written")
    parser.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    parser.add_argument("--seed", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    return BenchmarkConfig(presets=args.presets, modes=args.modes, device=args.device, warmup=args.warmup,
                           repeats=args.repeats, throughput_batch=args.throughput_batch,
                           throughput_modes=args.throughput_modes, throughput_repeats=args.throughput_repeats,
                           reference_modes=args.reference_modes, peers=list(args.peers),
                           agreement_images=args.agreement_images, model=args.model, threads=args.threads,
                           quick=args.quick, shared_machine=args.shared_machine, note=args.note, seed=args.seed)


def main(args: argparse.Namespace) -> int:
    from dhkd.persistence import atomic_write_json

    result = run_benchmark(config_from_args(args))
    print(format_report(result))
    if not args.no_save:
        path = results_path(result, args.output_dir)
        atomic_write_json(path, result)
        print(f"\nwrote {path}")
    return 0
