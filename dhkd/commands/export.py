"""``dhkd export``: a trained model as one ONNX file or ``torch.export`` program (map and score)."""
from __future__ import annotations

from pathlib import Path

NAME = "export"
HELP = "export a trained model (detector: image in, anomaly map and score out) to ONNX or torch.export"


def add_arguments(parser) -> None:
    """Add the ``dhkd export`` options to ``parser``."""
    parser.add_argument("--model", type=Path, required=True, help="a run folder or its model.safetensors")
    parser.add_argument("--format", choices=["onnx", "torch-export"], default="onnx")
    parser.add_argument("--output", type=Path, required=True, help="file to write (.onnx or .pt2)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    parser.add_argument("--map-size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                        help="size of the output anomaly map (default: the input size); give your images' size "
                             "to get exactly the map and score of `dhkd evaluate` and `dhkd predict`")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--static-batch", action="store_true", help="ONNX: fix the batch size to 1")


def run(args) -> int:
    """Run ``dhkd export`` (ONNX or torch.export); returns the exit status."""
    from dhkd.persistence import load_model
    from dhkd.runtime import export_onnx, export_program, require_onnx_packages

    if args.format == "onnx":
        try:  # before loading the model: a missing extra is known at once
            require_onnx_packages()
        except ImportError as e:
            raise SystemExit(f"dhkd export: {e}") from None
    model = load_model(args.model)
    size = args.image_size or model.image_size
    map_size = tuple(args.map_size) if args.map_size else None
    try:
        if args.format == "onnx":
            export_onnx(model, args.output, size, opset=args.opset, dynamic_batch=not args.static_batch,
                        map_size=map_size)
        else:
            export_program(model, size, args.output, map_size=map_size)
    except ValueError as e:  # an unfitted model, a bad size
        raise SystemExit(f"dhkd export: {e}") from None
    shown = f"{map_size[0]}×{map_size[1]}" if map_size else "input-size"
    inputs = f"{size}×{size} input"
    if model.input_mode != "squash" and map_size:
        from dhkd.data.windows import plan_windows

        inputs = f"the {plan_windows(map_size, size, model.input_mode).count} {size}×{size} windows of one image"
    print(f"wrote {args.output} ({args.format}, {inputs}; outputs anomaly_map ({shown}), score)")
    return 0
