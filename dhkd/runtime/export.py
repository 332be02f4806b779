"""Export the deployment module (:class:`dhkd.runtime.AnomalyDetector`) to ONNX or ``torch.export``.

The fused SS2D / SCMM / FCCM kernels are custom ops that ONNX cannot express, so export runs inside
``dhkd_kernels.use_backend("reference")``, whose ops are plain PyTorch, with the SS2D scan in a compact form
whose graph does not grow with the image size (:mod:`dhkd.runtime.export_scan`). Outputs: ``anomaly_map``
(b, 1, H, W) at ``map_size`` (default: the input size) and ``score`` (b,), with the teacher statistics and
map normalisation folded in: the same map and score as ``dhkd evaluate`` and ``dhkd predict`` for images
of that size (:func:`dhkd.models.scoring.map_and_score`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

import dhkd_kernels
from dhkd.models import DHKD
from dhkd.persistence import atomic_write

from .detector import AnomalyDetector
from .export_scan import export_formulation
from .progress import Stages

INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["anomaly_map", "score"]
ONNX_PACKAGES = ("onnx", "onnxscript")


def require_onnx_packages(packages: tuple[str, ...] = ONNX_PACKAGES) -> None:
    """Raise ImportError naming the missing packages and the ``[export]`` extra that installs them."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}, not installed here: install the export "
                          "extra with `pip install \"dhkd[export]\"` (onnx, onnxscript, onnxruntime), or "
                          "`pip install -e \".[export]\"` in a checkout")


def _pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {size}")
    return int(h), int(w)


def as_detector(model_or_detector: nn.Module, map_size: int | tuple[int, int] | None = None) -> AnomalyDetector:
    """The AnomalyDetector of a DHKD model (its quantiles fitted; maps at ``map_size``, default the input
    size) or the detector itself, in fp32 on the CPU."""
    if isinstance(model_or_detector, AnomalyDetector):
        if map_size is not None:
            raise ValueError("map_size applies to a DHKD model; an AnomalyDetector has its own output_size")
        det = model_or_detector
    elif isinstance(model_or_detector, DHKD):
        det = AnomalyDetector(model_or_detector, None if map_size is None else _pair(map_size, "map_size"))
    else:
        raise TypeError(f"expected a DHKD model or an AnomalyDetector, got {type(model_or_detector).__name__}")
    return det.float().cpu().eval()


@contextlib.contextmanager
def _traceable() -> Iterator[None]:
    """Plain-PyTorch ops only (the ``reference`` backend), the SS2D scan in its compact export form."""
    with dhkd_kernels.use_backend("reference"), export_formulation():
        yield


def _example(detector: AnomalyDetector, image_size: int | tuple[int, int], batch: int = 1) -> torch.Tensor:
    """A random input: a batch of ``image_size`` images, or the windows of one image for a detector that
    cuts images into windows (its input side must then be the model's)."""
    h, w = _pair(image_size, "image_size")
    plan = detector.plan
    if plan is None:
        return torch.randn(batch, 3, h, w)
    if (h, w) != (plan.side, plan.side):
        raise ValueError(f"the model cuts images into {plan.side}×{plan.side} windows; its input size cannot "
                         f"be {h}×{w}")
    return torch.randn(plan.count, 3, h, w)


def export_onnx(model_or_detector: nn.Module, path: str | os.PathLike, image_size: int | tuple[int, int],
                opset: int = 18, dynamic_batch: bool = True, optimize: bool = True,
                map_size: int | tuple[int, int] | None = None) -> Path:
    """Write the detector for ``image_size`` inputs to the ONNX file ``path`` (input ``image``, outputs
    ``anomaly_map`` at ``map_size`` and ``score``; the batch axis is dynamic unless ``dynamic_batch=False``).
    A model that cuts images into windows (``input_mode`` pad / tile) needs ``map_size``, the size of the
    images: its input is then the fixed number of windows of one such image (:mod:`dhkd.data.windows`).
    ``optimize`` runs the ONNX optimiser (constant folding, dead-node removal) before saving, without ONNX's
    own shape inference: that serialises the whole model, weights included, on every pass and took two
    thirds of the paper preset's export time."""
    require_onnx_packages()
    detector = as_detector(model_or_detector, map_size)
    x = _example(detector, image_size, batch=2 if dynamic_batch else 1)  # a batch of 1 would be specialised
    dynamic_batch = dynamic_batch and detector.plan is None  # the windows of one image: a fixed count
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    stage = Stages(f"export {Path(path).name}")
    stage("tracing the detector and converting it to ONNX")
    with _traceable(), torch.no_grad():
        program = torch.onnx.export(detector, (x,), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic,
                                    optimize=False, external_data=False, verbose=False)
    if optimize:
        from onnxscript.optimizer import optimize_ir

        stage(f"optimising the graph ({len(program.model.graph)} nodes)")
        optimize_ir(program.model, onnx_shape_inference=False)
    stage("saving")
    path = atomic_write(path, program.save)
    stage("done")
    return path


def export_program(model_or_detector: nn.Module, image_size: int | tuple[int, int],
                   path: str | os.PathLike | None = None,
                   map_size: int | tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` the detector for ``image_size`` inputs (static shapes; maps at ``map_size``); save it
    to ``path`` (a ``.pt2`` file, read back with ``torch.export.load``) when given."""
    detector = as_detector(model_or_detector, map_size)
    x = _example(detector, image_size)
    stage = Stages("export torch program")
    stage("tracing the detector")
    with _traceable(), torch.no_grad():
        program = torch.export.export(detector, (x,))
    if path is not None:
        stage("saving")
        atomic_write(path, lambda tmp: torch.export.save(program, tmp))
    stage("done")
    return program
