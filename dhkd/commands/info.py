"""``dhkd info``: version, built kernel backends, devices."""
from __future__ import annotations

import json
import platform

NAME = "info"
HELP = "show the version, the built kernel backends and the devices"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def collect() -> dict:
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


def run(args) -> int:
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
