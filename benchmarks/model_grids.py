"""A trained DHKD model's maps at feature resolution, saved for benchmarks/recipe_maps.py: the scoring choices
of docs/recipe.md (per-cell z-score, smoothing, the weight of the two students' maps, a horizontally flipped
second pass) measured on one trained model without training it again.

    python benchmarks/model_grids.py --model RUN_DIR --data elpv:installed:all --output PREFIX \
        [--lnet-weight 0.5] [--flip]
    python benchmarks/recipe_maps.py --maps PREFIX --data elpv:installed:all --output OUT \
        --variants raw gauss1 zscore+gauss1 zscore+gauss2 --image-score-top 1

Writes PREFIX_validation_grid.npy and PREFIX_test_grid.npy, (n, 1, h, w) float32 in dataset order: the
quantile-normalised combined map ``a·norm(map_L) + (1 − a)·norm(map_G)`` before the model's per-cell z-score
and smoothing (``a`` = ``--lnet-weight``, default the model's own weight: 0.5, or 1 without Gnet; the
quantiles are the model's). With ``--flip`` each raw map is the mean of the image's and of its mirror
image's (mirrored back), a test-time augmentation that doubles the inference cost.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dhkd.baselines.compare import DataSpec
from dhkd.denormals import flush_denormals
from dhkd.data import build_dataset
from dhkd.models.calibration import dataset_batches, normalisation_weights, normalise_maps
from dhkd.persistence import load_model


def raw_maps(model, x: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(map_L, map_G) of a batch; with ``flip`` averaged with those of the mirrored batch, mirrored back."""
    map_l, map_g = model.raw_maps(x)
    if flip:
        fl, fg = model.raw_maps(torch.flip(x, dims=[-1]))
        map_l, map_g = 0.5 * (map_l + torch.flip(fl, dims=[-1])), 0.5 * (map_g + torch.flip(fg, dims=[-1]))
    return map_l, map_g


def model_grids(model, dataset, lnet_weight: float | None = None, flip: bool = False,
                batch_size: int = 8) -> np.ndarray:
    """The (n, 1, h, w) combined normalised maps of every image of ``dataset`` (see the module docstring)."""
    mix = model.map_mix if lnet_weight is None else (lnet_weight, 1.0 - lnet_weight)
    weights = normalisation_weights(model.quantiles, mix)
    out = []
    with torch.inference_mode():
        for batch in dataset_batches(dataset, batch_size=batch_size):
            out.append(normalise_maps(*raw_maps(model, torch.stack([it["image"] for it in batch]), flip),
                                      weights).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # before any parallel work (dhkd.denormals)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="run folder or model.safetensors")
    p.add_argument("--data", required=True, type=DataSpec.parse, help="DATASET:ROOT:CATEGORY")
    p.add_argument("--output", required=True, help="prefix of the two .npy files")
    p.add_argument("--lnet-weight", type=float, default=None,
                   help="weight a of norm(map_L) in [0, 1] (map_G gets 1 − a; default: the model's)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image's maps")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation hold-out (as the trainer's)")
    args = p.parse_args(argv)
    if args.lnet_weight is not None and not 0.0 <= args.lnet_weight <= 1.0:
        raise SystemExit(f"model_grids.py: --lnet-weight must be in [0, 1], got {args.lnet_weight}")
    model = load_model(args.model).eval()
    spec = args.data
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for split in ("validation", "test"):
        t0 = time.time()
        data = build_dataset(spec.dataset, spec.root, spec.category, split, model.image_size, args.seed)
        grids = model_grids(model, data, args.lnet_weight, args.flip)
        np.save(f"{args.output}_{split}_grid.npy", grids.astype(np.float32))
        print(f"{split}: {len(data)} maps {tuple(grids.shape[-2:])} in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
