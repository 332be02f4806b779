"""ONNX export of a preset: export time, node count, file size, and parity with the eager detector under
onnxruntime (random weights, quantiles fitted on synthetic images; export cost does not depend on weights).

    nice python benchmarks/export.py --preset paper --output-json /tmp/export_paper.json

Prints one JSON object (also written to ``--output-json``) with the machine's load average before and after,
so a run on a shared machine is recognisable as such.
"""
import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from dhkd.benchmark.measure import synthetic_images
from dhkd.models import DHKD
from dhkd.models.calibration import fit_quantiles_on
from dhkd.runtime import AnomalyDetector, export_onnx


def measure(preset: str, optimize: bool, images: int, seed: int) -> dict:
    """Export ``preset`` once and check it under onnxruntime on ``images`` synthetic images."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(seed)
    model = DHKD.from_preset(preset).eval()
    x = synthetic_images(images, model.image_size, seed=seed)
    fit_quantiles_on(model, [(x, [f"synthetic {i}" for i in range(images)])], seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{preset}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, model.image_size, optimize=optimize)
        seconds = time.perf_counter() - t0
        graph = onnx.load(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        t0 = time.perf_counter()
        maps, scores = session.run(None, {"image": x.numpy()})
        ort_ms = 1e3 * (time.perf_counter() - t0) / images
        with torch.no_grad():
            want_maps, want_scores = AnomalyDetector(model)(x)
        return {"preset": preset, "optimize": optimize, "export_s": round(seconds, 1),
                "nodes": len(graph.graph.node), "file_mb": round(path.stat().st_size / 1e6, 2),
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "ort_max_abs_diff_map": float(abs(maps - want_maps.numpy()).max()),
                "ort_max_abs_diff_score": float(abs(scores - want_scores.numpy()).max()),
                "ort_ms_per_image_batch": round(ort_ms, 1), "images": images}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--no-optimize", action="store_true", help="skip the ONNX optimiser")
    parser.add_argument("--images", type=int, default=2, help="synthetic images for the parity check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", type=Path, default=None)
    args = parser.parse_args()
    load = list(os.getloadavg())
    result = measure(args.preset, not args.no_optimize, args.images, args.seed)
    result.update(host=socket.gethostname(), cpu_count=os.cpu_count(), torch=torch.__version__,
                  python=platform.python_version(), load_average_start=load, load_average_end=list(os.getloadavg()),
                  command=" ".join(["python"] + sys.argv))
    text = json.dumps(result, indent=1)
    print(text)
    if args.output_json:
        args.output_json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
