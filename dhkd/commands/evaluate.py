"""``dhkd evaluate``: score anomaly maps against a dataset's ground truth and write results.json/results.md.

Model-free form (maps from any method, float TIFFs at the original image size in the official layout):
    dhkd evaluate --maps DIR --dataset mvtec_loco --root ROOT --category CAT --output OUT

Model form (fits the map quantiles on the validation split — good images only — and, for a model with the
recipe's ``cell_norm``, its per-cell map statistics from the same maps; then evaluates the test split at full
resolution):
    dhkd evaluate --model RUN_DIR_OR_MODEL_FILE --dataset mvtec_ad --root ROOT --category CAT --output OUT
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

NAME = "evaluate"
HELP = "evaluate anomaly maps (a folder of TIFF maps, or a trained model) on a dataset's test split"


def add_arguments(parser) -> None:
    """Add the ``dhkd evaluate`` options to ``parser``."""
    from dhkd.data import DATASETS

    parser.add_argument("--maps", type=Path, help="folder of float TIFF maps: <maps>/<category>/test/<defect>/"
                        "<id>.tiff (the folder itself, its parent, or an output folder with anomaly_maps/)")
    parser.add_argument("--model", type=Path, help="trained model: a run folder or its model.safetensors")
    parser.add_argument("--device", default="auto", help="model form: auto, cpu, cuda, ...")
    parser.add_argument("--dataset", choices=DATASETS, required=True, help="dataset layout")
    parser.add_argument("--root", type=Path, required=True, help="dataset root folder")
    parser.add_argument("--category", required=True, help="category (object) name")
    parser.add_argument("--output", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the validation hold-out and of the AU-sPRO threshold subsampling")
    parser.add_argument("--overlays", action="store_true", help="also write heat-map overlay PNGs")
    parser.add_argument("--smooth-sigma", type=float, default=0.0,
                        help="Gaussian sigma applied to full-resolution maps before scoring (0 = off; the "
                             "authors' released LOCO evaluation used 2)")
    parser.add_argument("--image-score-top", type=float, default=None, metavar="P",
                        help="image score = mean of the map's top P %% of values (0 = its maximum); default: "
                             "the model's own rule (its config's image_score_top), the maximum for --maps")
    parser.add_argument("--export-maps", action="store_true",
                        help="model form: write the maps as float32 TIFFs under <output>/anomaly_maps/")
    parser.add_argument("--batch-size", type=int, default=8, help="model form: images per forward pass")


def evaluate_loaded_model(model, args) -> dict:
    """Evaluate an already loaded model with the options parsed by :func:`add_arguments`."""
    from dhkd.eval.evaluator import evaluate_model
    from dhkd.runtime import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise SystemExit(f"dhkd evaluate: {e}") from None
    model.to(device)
    if args.image_score_top is not None:  # score this evaluation with another rule than the model's own
        model.config = replace(model.config, image_score_top=args.image_score_top)
    return evaluate_model(model, args.dataset, args.root, args.category, args.output, seed=args.seed,
                          batch_size=args.batch_size, smooth_sigma=args.smooth_sigma,
                          export_maps=args.export_maps, overlays=args.overlays)


def print_summary(results: dict, output: Path) -> None:
    """Print the metrics table of ``output/results.md`` and where the results were written."""
    print((output / "results.md").read_text().split("\n## Metric definitions")[0].rstrip())
    print(f"\nwrote {output / 'results.json'} and {output / 'results.md'}")


def run(args) -> int:
    """Run ``dhkd evaluate`` on a model's maps or on a folder of maps; returns the exit status."""
    from dhkd.eval.evaluator import evaluate_maps
    from dhkd.models.scoring import check_image_score_top

    if (args.maps is None) == (args.model is None):
        raise SystemExit("dhkd evaluate: give exactly one of --maps DIR (maps of any method) or --model RUN")
    if args.image_score_top is not None:
        try:
            check_image_score_top(args.image_score_top)
        except ValueError as e:
            raise SystemExit(f"dhkd evaluate: --image-score-top: {e}") from None
    if args.model is not None:
        from dhkd.allocator import keep_freed_memory
        from dhkd.persistence import load_model

        keep_freed_memory()

        results = evaluate_loaded_model(load_model(args.model), args)
        print_summary(results, args.output)
        return 0
    if args.export_maps:
        raise SystemExit("dhkd evaluate: --export-maps needs a model; with --maps the maps already exist")
    results = evaluate_maps(args.maps, args.dataset, args.root, args.category, args.output, seed=args.seed,
                            overlays=args.overlays, smooth_sigma=args.smooth_sigma,
                            image_score_top=args.image_score_top or 0.0)
    print_summary(results, args.output)
    return 0
