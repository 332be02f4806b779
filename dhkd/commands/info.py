"""``dhkd info``: version, built kernel backends, devices; ``--flops``: parameters and FLOPs of a model."""
from __future__ import annotations

import json
import platform

NAME = "info"
HELP = "show the version, the built kernel backends and the devices"


def add_arguments(parser) -> None:
    """Add the ``dhkd info`` options to ``parser``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--flops", action="store_true",
                        help="report parameters and conv/linear/scan FLOPs per module instead")
    parser.add_argument("--preset", default="paper", help="--flops: model preset (paper, small, tiny)")
    parser.add_argument("--image-size", type=int, default=None, help="--flops: input side (default: the preset's)")


def collect() -> dict:
    """Versions, devices and the kernels built and chosen on this machine, as a dict."""
    import torch

    import dhkd
    import dhkd_kernels

    return {
        "dhkd": dhkd.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda_available": torch.cuda.is_available(),
        "kernels": dhkd_kernels.backends(),
    }


def run_flops(args) -> int:
    """Print the parameter and FLOP report of ``--preset`` at ``--image-size``; returns the exit status."""
    from dhkd.benchmark.flops import flop_report, format_flop_report
    from dhkd.models import DHKD

    try:
        model = DHKD.from_preset(args.preset)
        rep = flop_report(model, args.image_size or model.image_size)
    except ValueError as e:
        raise SystemExit(f"dhkd info --flops: {e}") from e
    rep["preset"] = args.preset
    print(json.dumps(rep, indent=2) if args.json else f"preset {args.preset}\n" + format_flop_report(rep))
    return 0


def run(args) -> int:
    """Run ``dhkd info``; returns the exit status."""
    if args.flops:
        return run_flops(args)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"dhkd {info['dhkd']}  torch {info['torch']}  python {info['python']}  {info['machine']}")
    k = info["kernels"]
    for ext, status in k["extensions"].items():
        print(f"  extension {ext}: {status}")
    print(f"  triton installed: {k['triton']}   CUDA device: {k['cuda_device'] or 'none'}   "
          f"CPU threads: {k['cpu_threads']}")
    for op, per_dev in k["ops"].items():
        for dev, d in per_dev.items():
            print(f"  {op:16s} on {dev:4s}: uses {d['default']:9s} (available: {', '.join(d['available'])})")
    return 0
