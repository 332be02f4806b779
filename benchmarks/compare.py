"""Side-by-side comparison of DHKD, its ablations and the baselines (kNN, EfficientAD-S/M) per dataset.

    python benchmarks/compare.py --data mvtec_ad:/data/mvtec_ad:bottle --data elpv:installed:all \
        --methods knn,efficientad-s,dhkd,dhkd-no-hstm,dhkd-no-scmm,dhkd-no-fccm \
        --teacher mvtec_ad_bottle=teachers/bottle.safetensors --teacher elpv_all=teachers/elpv.safetensors \
        --steps 2500 --output runs/compare

Writes <output>/compare.md (one table per dataset: metrics, fit time, inference ms/image, steps) and
compare.json, plus each method's results.json from the evaluator. See dhkd/baselines/compare.py.
"""
from __future__ import annotations

import argparse

import torch

from dhkd.baselines.compare import METHODS, CompareConfig, DataSpec, compare
from dhkd.denormals import flush_denormals
from dhkd.teacher.backbones import BACKBONES


def parse_teachers(values: list[str]) -> dict[str, str]:
    """``KEY=PATH`` (KEY = dataset_category) or a bare ``PATH`` for every dataset."""
    out = {}
    for v in values:
        key, sep, path = v.partition("=")
        out.update({key: path} if sep else {"*": v})
    return out


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # before any parallel work (dhkd.denormals)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, type=DataSpec.parse,
                   help="dataset:root:category (repeatable), e.g. elpv:installed:all")
    p.add_argument("--methods", default="knn,efficientad-s,dhkd",
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--teacher", action="append", default=[],
                   help="KEY=PATH per dataset_category, or PATH for all; a PATH may be "
                        "backbone:efficientnet-lite0 (the DHKD rows' teacher is then the backbone itself)")
    p.add_argument("--output", default="runs/compare")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--lr", type=float, default=5e-4, help="DHKD learning rate (EfficientAD keeps its 1e-4)")
    p.add_argument("--lr-decay-step", type=int, default=2000)
    p.add_argument("--time-limit-minutes", type=float, default=0.0, help="per trained method")
    p.add_argument("--lr-decay-time-fraction", type=float, default=0.0,
                   help="with a time limit: every trained method also decays its lr (x0.1) once this share of "
                        "the limit has passed, as the cpu recipe does (0: by step only)")
    p.add_argument("--image-size", type=int, default=CompareConfig.image_size,
                   help="square input side of every method (the kNN's descriptor grid is side/8)")
    p.add_argument("--knn-bank-size", type=int, default=CompareConfig.knn_bank_size,
                   help="training descriptors drawn into the kNN's memory bank")
    p.add_argument("--knn-backbone", default=CompareConfig.knn_backbone, choices=sorted(BACKBONES),
                   help="backbone of the knn row's descriptors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timed-images", type=int, default=20)
    p.add_argument("--save-grids", action="store_true",
                   help="also save each method's validation/test maps at its own resolution "
                        "(for benchmarks/recipe_maps.py)")
    p.add_argument("--grid-sigma", type=float, default=0.0,
                   help="Gaussian smoothing of the maps at each method's own resolution, in cells (docs/recipe.md)")
    p.add_argument("--cache-limit-mb", type=int, default=CompareConfig.cache_limit_mb,
                   help="DHKD rows keep the training images' teacher outputs in memory up to this size")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = CompareConfig(output=args.output, teachers=parse_teachers(args.teacher), preset=args.preset,
                        steps=args.steps, lr=args.lr, lr_decay_step=args.lr_decay_step,
                        time_limit_minutes=args.time_limit_minutes,
                        lr_decay_time_fraction=args.lr_decay_time_fraction, image_size=args.image_size,
                        knn_bank_size=args.knn_bank_size, knn_backbone=args.knn_backbone, seed=args.seed,
                        timed_images=args.timed_images,
                        save_grids=args.save_grids, grid_sigma=args.grid_sigma, cache_limit_mb=args.cache_limit_mb)
    compare(args.data, [m.strip() for m in args.methods.split(",") if m.strip()], cfg)
    print(open(f"{args.output}/compare.md").read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
