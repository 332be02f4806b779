"""``dhkd predict``: anomaly maps and scores for an image or a folder of images with a trained model."""
from __future__ import annotations

import sys
from pathlib import Path

NAME = "predict"
HELP = "score an image or a folder of images with a trained model: heat-map PNGs and scores.json"


def add_arguments(parser) -> None:
    """Add the ``dhkd predict`` options to ``parser``."""
    parser.add_argument("input", type=Path, help="an image file or a folder of images")
    parser.add_argument("--model", type=Path, required=True,
                        help="trained model (model.safetensors of a run, or the run folder)")
    parser.add_argument("--output", type=Path, required=True, help="folder for heat maps and scores.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--mode", default="eager",
                        help="execution mode, as in `dhkd benchmark`: eager, channels_last, compile, bf16, "
                             "bf16-compile, fp16, fp16-compile, cudagraph, fp16-cudagraph. Reduced precision "
                             "changes the maps slightly (the benchmark reports by how much)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="optional image-score threshold: adds an 'anomalous' flag per image")
    parser.add_argument("--vmax", type=float, default=0.5,
                        help="heat-map colour scale top, in normalised map units (0 = the 0.9 quantile and "
                             "0.1 = the 0.995 quantile of normal pixels); one fixed scale for all images")
    parser.add_argument("--no-heatmaps", action="store_true", help="write scores.json only")


def run(args) -> int:
    """Run ``dhkd predict`` on an image or a folder: heat maps and scores.json; returns the exit status."""
    import numpy as np
    import torch

    from dhkd.allocator import keep_freed_memory
    from dhkd.data.common import IMAGE_EXTENSIONS, DatasetError, list_images, read_rgb
    from dhkd.data.windows import image_windows
    from dhkd.eval.visualize import save_overlay
    from dhkd.models.scoring import check_finite
    from dhkd.persistence import atomic_write_json, load_model
    from dhkd.runtime import MODES, AnomalyDetector, Runner, pick_device, unsupported_reason

    if args.mode not in MODES:
        raise SystemExit(f"dhkd predict: unknown --mode {args.mode!r}; one of {', '.join(MODES)}")
    keep_freed_memory()
    model_path = args.model / "model.safetensors" if args.model.is_dir() else args.model
    model = load_model(model_path)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise SystemExit(f"dhkd predict: {e}") from None
    reason = unsupported_reason(MODES[args.mode], device)
    if reason:
        raise SystemExit(f"dhkd predict: mode {args.mode!r} cannot run on {device}: {reason}")
    detectors = {}  # one per image size: the map is resized once, from feature resolution to the image size

    def detect(x, size):
        if size not in detectors:
            detectors[size] = Runner(AnomalyDetector(model, output_size=size), MODES[args.mode], device)
        return detectors[size](x)
    if args.input.is_dir():
        paths = list_images(args.input)
        if not paths:
            raise SystemExit(f"dhkd predict: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {args.input}")
    elif args.input.is_file():
        paths = [args.input]
    else:
        raise SystemExit(f"dhkd predict: {args.input} does not exist")
    args.output.mkdir(parents=True, exist_ok=True)
    results, errors = [], []
    with torch.no_grad():
        for path in paths:
            try:
                img = read_rgb(path)
            except DatasetError as e:  # one unreadable image does not stop the others
                errors.append({"path": str(path), "error": str(e)})
                print(f"dhkd predict: skipped {path}: {e}", file=sys.stderr)
                continue
            # map and score at the image's size, on the host in fp32: those of `dhkd evaluate`
            x = image_windows(img, model.image_size, model.input_mode)[0]  # (1 or n, 3, S, S)
            amap, score = detect(x, (img.height, img.width))
            check_finite(amap, str(path))
            full, score = amap[0, 0].numpy(), float(score[0])
            entry = {"path": str(path), "score": score}
            if args.threshold is not None:
                entry["anomalous"] = score > args.threshold
            if not args.no_heatmaps:
                out = args.output / f"{path.stem}_heatmap.png"
                save_overlay(out, np.asarray(img), full, 0.0, args.vmax)
                entry["heatmap"] = str(out)
            results.append(entry)
            print(f"{score:10.4f}  {path}")
    atomic_write_json(args.output / "scores.json", {"model": str(model_path), "images": results,
                                                     "errors": errors})
    print(f"wrote {args.output / 'scores.json'}")
    if errors:
        print(f"dhkd predict: {len(errors)} of {len(paths)} images could not be read (listed under 'errors' in "
              f"scores.json); exit status 1", file=sys.stderr)
        return 1
    return 0
