"""How an image of any size and aspect becomes the model's S×S inputs, and how their maps become one map.

The model always sees S×S windows (S = ``DHKDConfig.image_size``). ``DHKDConfig.input_mode`` picks how an image
of H0×W0 pixels is turned into them (:func:`plan_windows`):

``squash`` (default)
    the whole image resized to S×S, whatever its aspect (a 300×900 strip is squeezed 3× along its length);
``pad``
    aspect kept: the long side resized to S, the short side padded to S with the ImageNet mean colour
    (zero after normalisation), the image centred; the padding's part of the map is cut off again;
``tile``
    aspect kept: the short side resized to S, then ceil(L/S) S×S windows along the long side L, evenly
    spaced from one end to the other (overlapping where L is not a multiple of S); every window sees the
    surface at the same scale, whatever the image's length. Overlaps are averaged in the map.

A square image gives the same single S×S input in every mode. The map of each window is stitched into the
resized image's frame (:func:`dhkd.models.scoring.stitch_windows`), which is then resized to H0×W0, so the
anomaly map and image score always belong to the whole image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from .common import image_size, preprocess, read_rgb

INPUT_MODES = ("squash", "pad", "tile")


def check_input_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`INPUT_MODES`, else a ValueError naming them."""
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input_mode {mode!r}; expected one of {', '.join(INPUT_MODES)}")
    return mode


@dataclass(frozen=True)
class WindowPlan:
    """The S×S windows of one image: the image is resized to ``frame`` (h, w) and each window's top-left
    corner sits at an ``offsets`` entry (y, x) of that frame; a negative offset or a window reaching past the
    frame is padding."""
    mode: str
    side: int
    frame: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        """The number of windows."""
        return len(self.offsets)

    @property
    def whole(self) -> bool:
        """Whether the one window is the whole resized image (every square image; every image in "squash"
        mode): its map needs no stitching."""
        return self.frame == (self.side, self.side) and self.offsets == ((0, 0),)


def _spread(length: int, side: int) -> list[int]:
    """Start positions of ceil(length/side) windows of ``side`` covering ``length`` (≥ side), first at 0 and
    last at length − side, evenly spaced."""
    n = math.ceil(length / side)
    if n == 1:
        return [0]
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


def plan_windows(size: tuple[int, int], side: int, mode: str) -> WindowPlan:
    """The :class:`WindowPlan` of an image of ``size`` (H0, W0) for S = ``side`` in ``mode``."""
    check_input_mode(mode)
    h0, w0 = int(size[0]), int(size[1])
    if h0 < 1 or w0 < 1 or side < 1:
        raise ValueError(f"image size and window side must be positive, got size {size}, side {side}")
    if mode == "squash" or h0 == w0:
        return WindowPlan(mode, side, (side, side), ((0, 0),))
    if mode == "pad":
        scale = side / max(h0, w0)
        h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        return WindowPlan(mode, side, (h, w), ((-((side - h) // 2), -((side - w) // 2)),))
    scale = side / min(h0, w0)
    h, w = max(side, round(h0 * scale)), max(side, round(w0 * scale))
    return WindowPlan(mode, side, (h, w), tuple((y, x) for y in _spread(h, side) for x in _spread(w, side)))


def cut_windows(frame: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """The (n, C, S, S) windows of a (C, h, w) frame (the image resized to ``plan.frame``), zero outside it."""
    if tuple(frame.shape[-2:]) != plan.frame:
        raise ValueError(f"the frame is {tuple(frame.shape[-2:])}, the plan expects {plan.frame}")
    s, (h, w) = plan.side, plan.frame
    out = []
    for y, x in plan.offsets:
        top, left = max(0, y), max(0, x)
        bottom, right = min(h, y + s), min(w, x + s)
        crop = frame[..., top:bottom, left:right]
        out.append(F.pad(crop, (left - x, x + s - right, top - y, y + s - bottom)))
    return torch.stack(out)


def image_windows(img: Image.Image, side: int, mode: str) -> tuple[torch.Tensor, WindowPlan]:
    """(windows (n, 3, S, S), plan) of an RGB image."""
    plan = plan_windows((img.height, img.width), side, mode)
    return cut_windows(preprocess(img, plan.frame), plan), plan


def check_same_input_mode(model, dataset) -> None:
    """Raise unless ``dataset`` cuts images into inputs as ``model`` was trained to see them (its
    ``input_mode``, default "squash")."""
    mode, got = getattr(model, "input_mode", "squash"), getattr(dataset, "input_mode", "squash")
    if mode != got:
        raise ValueError(f"the model was trained with input_mode {mode!r} but the dataset cuts images with "
                         f"{got!r}: build it with build_dataset(..., input_mode={mode!r})")


def batch_windows(items: list[dict]) -> tuple[torch.Tensor, list[int]]:
    """All model inputs of a list of dataset items as one (N, 3, S, S) batch, and each item's window count:
    an item's ``image`` is (3, S, S) in ``squash`` mode and (n, 3, S, S) otherwise."""
    parts = [it["image"].reshape(-1, *it["image"].shape[-3:]) for it in items]
    return torch.cat(parts), [p.shape[0] for p in parts]


class WindowDataset(torch.utils.data.Dataset):
    """Every window of every image of a dataset as its own item (``image`` (3, S, S), ``label``, ``path``):
    what a model trains on when its images are cut into several windows."""

    def __init__(self, dataset):
        self.dataset = dataset
        side, mode = dataset.image_size, dataset.input_mode
        self.index = [(i, k) for i, s in enumerate(dataset.samples)
                      for k in range(plan_windows(image_size(s.path), side, mode).count)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> dict:
        i, k = self.index[j]
        sample = self.dataset.samples[i]
        img = read_rgb(sample.path)  # one window cut, not all of them for one
        plan = plan_windows((img.height, img.width), self.dataset.image_size, self.dataset.input_mode)
        window = WindowPlan(plan.mode, plan.side, plan.frame, (plan.offsets[k],))
        return {"image": cut_windows(preprocess(img, plan.frame), window)[0], "label": sample.label,
                "path": str(sample.path)}
