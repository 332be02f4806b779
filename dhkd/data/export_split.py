"""Link the images of one dataset split into a flat folder, e.g. to distil a teacher on a category's
training images without its validation hold-out:

    python -m dhkd.data.export_split mvtec_ad ROOT bottle train OUT_DIR
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import DATASETS, build_dataset


def export_split(dataset: str, root: str, category: str, split: str, out: Path, seed: int = 0) -> int:
    """Link the images of one dataset split into ``out`` (numbered); returns how many."""
    samples = build_dataset(dataset, root, category, split, 1, seed).samples
    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        link = out / f"{i:05d}_{s.path.name}"
        if not link.exists():
            os.symlink(s.path.resolve(), link)
    return len(samples)


def main() -> None:
    """Command-line entry point of :func:`export_split`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("root")
    parser.add_argument("category")
    parser.add_argument("split", choices=("train", "validation", "test"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation hold-out")
    args = parser.parse_args()
    n = export_split(args.dataset, args.root, args.category, args.split, args.out, args.seed)
    print(f"linked {n} images into {args.out}")


if __name__ == "__main__":
    main()
