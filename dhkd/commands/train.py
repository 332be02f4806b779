"""``dhkd train``: train one model per category (several categories: one after another, or spread over
the ranks of a ``torchrun`` launch)."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

NAME = "train"
HELP = "train DHKD on one or more categories of a dataset (paper recipe by default)"


def add_arguments(parser) -> None:
    """Add the ``dhkd train`` options to ``parser``."""
    from dhkd.data import DATASETS
    from dhkd.models import PRESETS
    from dhkd.train.recipes import RECIPES

    parser.add_argument("--config", type=Path, help="YAML file with TrainConfig fields (flags override it)")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="start from a named recipe instead of the paper's defaults (flags override it): "
                             "cpu = one category in at most an hour on a CPU (docs/recipe.md)")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset layout (default mvtec_ad)")
    parser.add_argument("--root", help="dataset root folder")
    parser.add_argument("--category", help="category; several as a comma-separated list (or 'all' present "
                        "under the root)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default paper)")
    parser.add_argument("--teacher", help="teacher weights (required): EfficientAD teacher_*.pth, anomalib or "
                        "distilled .safetensors (see docs/teacher.md); backbone:efficientnet-lite0 for the backbone's "
                        "own features (no teacher file); 'random' for an untrained teacher (tests and demos only)")
    parser.add_argument("--steps", type=int, help="training steps (paper: 100000)")
    parser.add_argument("--image-size", type=int, help="square input side (default 256)")
    parser.add_argument("--input-mode", choices=("squash", "pad", "tile"),
                        help="how an image becomes the square input: squash (resize, the default), pad (aspect "
                             "kept, padded) or tile (short side to the input side, windows along the long "
                             "side); kept with the model. Sets model_overrides' input_mode, keeping the rest")
    parser.add_argument("--seed", type=int, help="seed of init, data order, dropout and the hold-out")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--output", help="runs are written to OUTPUT/<dataset>/<category>/<timestamp>/")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue a run exactly from its last checkpoint (uses its config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any TrainConfig field, e.g. --set lr=3e-4 --set "
                             "'model_overrides={use_hstm: false}'")


def build_config(args):
    """The :class:`~dhkd.train.TrainConfig` of the parsed arguments (a resumed run's, a YAML file's, or the flags')."""
    from dhkd.train import TrainConfig
    from dhkd.train.recipes import recipe_config

    given = [flag for flag, value in (("--resume", args.resume), ("--config", args.config),
                                      ("--recipe", args.recipe)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} each give the whole starting config: use one of them")
    if args.resume is not None:
        cfg = TrainConfig.from_yaml(args.resume / "config.yaml").override([f"run_dir={args.resume}"])
    elif args.config is not None:
        cfg = TrainConfig.from_yaml(args.config)
    elif args.recipe is not None:
        cfg = recipe_config(args.recipe)
    else:
        cfg = TrainConfig()
    flags = {"dataset": args.dataset, "root": args.root, "category": args.category, "preset": args.preset,
             "teacher": args.teacher, "steps": args.steps, "image_size": args.image_size, "seed": args.seed,
             "device": args.device, "output": args.output}
    assignments = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)
    cfg = cfg.override(assignments)
    if args.input_mode is not None:
        cfg = dataclasses.replace(cfg, model_overrides={**cfg.model_overrides, "input_mode": args.input_mode})
    return cfg


def evaluator_for(cfg):
    """The test-split evaluation a :class:`~dhkd.train.Trainer` of ``cfg`` runs (its ``evaluate_test``): the
    package's :func:`dhkd.eval.evaluator.evaluate` with the config's seed, overlays and map export; None when
    ``cfg.evaluate`` is off."""
    if not cfg.evaluate:
        return None
    from dhkd.eval.evaluator import evaluate

    return functools.partial(evaluate, seed=cfg.seed, overlays=cfg.overlays, export_maps=cfg.export_maps)


def format_metrics(row: dict) -> str:
    """The headline metrics of one trained category (those that were computed) as one line."""
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "au_pro": "AU-PRO@0.3"}
    parts = [f"{label} {row[key]:.4f}" for key, label in names.items() if row.get(key) is not None]
    return ", ".join(parts) if parts else "not evaluated"


def run(args) -> int:
    """Run ``dhkd train`` over the configured categories; returns the exit status."""
    from dhkd.train.multi import train_categories, world_size

    cfg = build_config(args)
    rows = train_categories(cfg, evaluate_test=evaluator_for(cfg))
    for row in rows:
        print(f"{row['category']}: {row['steps']} steps in {row['train_seconds']:.0f} s; " + format_metrics(row)
              + f"\n  run folder: {row['run_dir']}")
    if world_size() > 1:
        # A torchrun worker ends here, its results written and its process group destroyed: Gloo's own
        # teardown at interpreter exit sometimes aborts ("terminate called without an active exception",
        # about 1 in 15 two-rank CPU runs with torch 2.13), which torchrun reports as a failed job.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
