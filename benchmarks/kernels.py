"""Kernel micro-benchmarks: SS2D (benchmarks/kernels_ss2d.py), the fused SCMM/FCCM blocks
(benchmarks/kernels_fused.py) and the selective scan (benchmarks/kernels_selective_scan.py), every available
backend against the reference in one run.

    python benchmarks/kernels.py [--quick] [--only ss2d|fused|selective_scan] [--out-dir DIR]

Each section prints its table and writes JSON under benchmarks/results/ (or DIR).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = {"ss2d": "kernels_ss2d.py", "fused": "kernels_fused.py", "selective_scan": "kernels_selective_scan.py"}


def _load(filename: str):
    spec = importlib.util.spec_from_file_location(filename[:-3], HERE / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    parser.add_argument("--out-dir", type=Path, default=None, help="write the JSON files here instead")
    args = parser.parse_args(argv)
    for name, filename in SECTIONS.items():
        if args.only and name != args.only:
            continue
        print(f"=== {name} ({filename}) ===", flush=True)
        module = _load(filename)
        section_args = ["--quick"] if args.quick else []
        if args.out_dir:
            section_args += ["--out", str(args.out_dir / f"kernels_{name}.json")]
        module.main(section_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
