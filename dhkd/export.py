"""Export the whole deployment module (:class:`dhkd.inference.AnomalyDetector`) to ONNX or ``torch.export``.

The fused SS2D / SCMM / FCCM kernels are custom ops that ONNX cannot express, so export runs inside
``dhkd_kernels.use_backend("reference")``, whose ops are plain PyTorch: the exported graph carries the
exportable decomposition (the SS2D scan as chunked log-depth scans). Outputs: ``anomaly_map``
(b, 1, H, W) and ``score`` (b,), with the teacher statistics and map normalisation folded in.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import dhkd_kernels
from dhkd.inference import AnomalyDetector
from dhkd.models import DHKD

INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["anomaly_map", "score"]


def as_detector(model_or_detector: nn.Module) -> AnomalyDetector:
    """The AnomalyDetector for a DHKD model (quantiles must be fitted) or the detector itself, on the CPU."""
    if isinstance(model_or_detector, AnomalyDetector):
        det = model_or_detector
    elif isinstance(model_or_detector, DHKD):
        det = AnomalyDetector(model_or_detector)
    else:
        raise TypeError(f"expected a DHKD model or an AnomalyDetector, got {type(model_or_detector).__name__}")
    return det.float().cpu().eval()


def _example(detector: AnomalyDetector, image_size: int | tuple[int, int], batch: int = 1) -> torch.Tensor:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return torch.randn(batch, 3, h, w)


def export_onnx(model_or_detector: nn.Module, path: str | os.PathLike, image_size: int | tuple[int, int],
                opset: int = 18, dynamic_batch: bool = True, optimize: bool = True) -> Path:
    """Write the detector for ``image_size`` inputs to the ONNX file ``path`` (input ``image``, outputs
    ``anomaly_map`` and ``score``; the batch axis is dynamic unless ``dynamic_batch=False``). ``optimize``
    runs the ONNX optimiser (constant folding, dead-node removal) on the graph before saving."""
    detector = as_detector(model_or_detector)
    x = _example(detector, image_size, batch=2 if dynamic_batch else 1)  # a batch of 1 would be specialised
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    with dhkd_kernels.use_backend("reference"), torch.no_grad():
        program = torch.onnx.export(detector, (x,), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic,
                                    optimize=optimize, external_data=False, verbose=False)
    program.save(str(path))
    return path


def export_program(model_or_detector: nn.Module, image_size: int | tuple[int, int],
                   path: str | os.PathLike | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` the detector for ``image_size`` inputs (static shapes); save it to ``path`` (a
    ``.pt2`` file, read back with ``torch.export.load``) when given."""
    detector = as_detector(model_or_detector)
    x = _example(detector, image_size)
    with dhkd_kernels.use_backend("reference"), torch.no_grad():
        program = torch.export.export(detector, (x,))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    return program
