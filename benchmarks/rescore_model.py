"""Evaluate a trained model's test split again with its map scoring changed: the per-cell z-score switched off
and/or another smoothing sigma (the trained weights and the quantile calibration are kept).

    python benchmarks/rescore_model.py --model RUN_DIR --dataset D --root R --category C --output OUT \
        [--no-cell-norm] [--map-sigma S]

It answers "what does this model's raw map score?" for a model trained with the CPU recipe's scoring
(docs/recipe.md) without training it again; results.json/md go to OUT as for `dhkd evaluate`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from dhkd.data import build_dataset
from dhkd.eval.evaluator import evaluate
from dhkd.persistence import load_model


def rescored_model(path: Path, no_cell_norm: bool = False, map_sigma: float | None = None):
    """The model at ``path`` (a run folder or its model.safetensors) with the per-cell z-score switched off
    (``no_cell_norm``) and/or another smoothing sigma (``map_sigma``; None keeps the model's)."""
    model = load_model(path)
    sigma = model.config.map_sigma if map_sigma is None else map_sigma
    cell_norm = model.cell_norm and not no_cell_norm
    model.config = dataclasses.replace(model.config, cell_norm=cell_norm, map_sigma=sigma)  # validated there
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="run folder or model.safetensors")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--no-cell-norm", action="store_true", help="score without the per-cell z-score")
    p.add_argument("--map-sigma", type=float, default=None, help="smoothing in feature cells (default: the model's)")
    args = p.parse_args(argv)
    model = rescored_model(args.model, no_cell_norm=args.no_cell_norm, map_sigma=args.map_sigma)
    test = build_dataset(args.dataset, args.root, args.category, "test", model.config.image_size)
    with torch.inference_mode():
        result = evaluate(model, test, args.output)
    print(json.dumps(result["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
