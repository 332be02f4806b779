"""The deployment module: an image batch in, the anomaly map and the image score out, in one call.

It runs the model's own inference path (:meth:`dhkd.models.DHKD.detect`) on a private copy whose teacher
statistics are folded into the teacher's last convolution and whose map normalisation is three constants:
one plain ``nn.Module`` (no dropout, nothing to fit) that gives the evaluator's numbers and exports to ONNX /
``torch.export``. A model with the recipe's per-cell normalisation and smoothing (``cell_norm``, ``map_sigma``)
keeps them: the cell statistics are buffers of the copy, the smoothing a fixed separable convolution.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from dhkd.data.windows import plan_windows
from dhkd.models import DHKD


class AnomalyDetector(nn.Module):
    """``detector(x) -> (anomaly_map (b, 1, H, W), score (b,))`` for ImageNet-normalised x (b, 3, h, w).

    The map is the normalised combined map resized bilinearly from feature resolution to ``output_size``
    (default: the input size), exactly as the evaluator resizes it to an image's original size; the score is
    its maximum, or the mean of its top ``image_score_top`` % (:func:`dhkd.models.scoring.map_and_score`). Pass
    the original image size as ``output_size`` to get the evaluator's map and score for images of that size.
    """

    def __init__(self, model: DHKD, output_size: tuple[int, int] | None = None):
        super().__init__()
        if not isinstance(model, DHKD):
            raise TypeError(f"expected a DHKD model, got {type(model).__name__}")
        if not model.has_quantiles:
            raise ValueError("the model's map quantiles are not fitted, so its maps cannot be normalised: fit "
                             "them on good validation images with dhkd.models.calibration.fit_quantiles(model, "
                             "validation_dataset) (or `dhkd evaluate --model`, which saves nothing), or use a "
                             "model.safetensors written by `dhkd train`, which always fits them")
        if model.cell_norm and not model.has_cell_statistics:
            raise ValueError("the model's per-cell map statistics are not fitted (cell_norm=True), so its maps "
                             "cannot be normalised: fit them with the quantiles, dhkd.models.calibration."
                             "fit_quantiles(model, validation_dataset), or use a model.safetensors written by "
                             "`dhkd train`, which always fits them")
        if output_size is not None and (len(output_size) != 2 or min(output_size) <= 0):
            raise ValueError(f"output_size must be (height, width) > 0, got {output_size}")
        self.model = copy.deepcopy(model).eval().fold_teacher_statistics()
        self.model.requires_grad_(False)
        self.weights = model.map_weights()  # Python floats: constants in compiled graphs
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.plan = None  # the windows of one image of output_size, when the model cuts images into several
        if model.input_mode != "squash":
            if self.output_size is None:
                raise ValueError(f"a model with input_mode {model.input_mode!r} cuts each image into windows by "
                                 "its size: give the size of the images as output_size")
            plan = plan_windows(self.output_size, model.image_size, model.input_mode)
            self.plan = None if plan.whole else plan
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map, image score) of an image batch, or of the windows of one image (``plan``)."""
        if self.plan is not None and x.shape[0] != self.plan.count:
            raise ValueError(f"this detector judges {self.output_size[0]}×{self.output_size[1]} images as "
                             f"{self.plan.count} windows of {self.plan.side}×{self.plan.side}, got a batch of "
                             f"{x.shape[0]}")
        return self.model.detect(x, self.output_size, self.weights, self.plan)
