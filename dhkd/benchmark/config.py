"""The benchmark's configuration: the dataclass, its command-line flags and the settings it resolves to on a
device (modes, repeats, peers)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dhkd.runtime.modes import MODES, unsupported_reason

SCHEMA = "dhkd-latency/1"
DHKD, REFERENCE, EFFICIENTAD = "dhkd", "dhkd-reference", "efficientad-m"
TIMED_REGION = ("host tensor -> device -> detector (teacher, student, decoders, folded normalisation, "
                "bilinear resize to the input size, max score) -> map and score on the host")


@dataclass
class BenchmarkConfig:
    """What one benchmark run measures (see :func:`add_arguments` for each field's meaning)."""

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


def default_modes(device: torch.device) -> list[str]:
    """Every mode worth timing that ``device`` supports."""
    names = (["eager", "channels_last", "compile", "bf16", "bf16-compile", "fp16", "fp16-compile"]
             if device.type == "cpu" else
             ["eager", "cudagraph", "fp16", "fp16-compile", "fp16-cudagraph", "bf16"])
    return [n for n in names if unsupported_reason(MODES[n], device) is None]


def settings(cfg: BenchmarkConfig, device: torch.device) -> dict:
    """The run's resolved settings on ``device``: repeats, modes (and the skipped ones with the reason), peers."""
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dhkd benchmark`` flags."""
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
    """The :class:`BenchmarkConfig` of parsed :func:`add_arguments` flags."""
    return BenchmarkConfig(presets=args.presets, modes=args.modes, device=args.device, warmup=args.warmup,
                           repeats=args.repeats, throughput_batch=args.throughput_batch,
                           throughput_modes=args.throughput_modes, throughput_repeats=args.throughput_repeats,
                           reference_modes=args.reference_modes, peers=list(args.peers),
                           agreement_images=args.agreement_images, model=args.model, threads=args.threads,
                           quick=args.quick, shared_machine=args.shared_machine, note=args.note, seed=args.seed)


