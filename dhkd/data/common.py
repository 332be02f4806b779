"""The item format shared by every dataset, image/mask reading with Pillow, and the dataset class.

An item is a dict:
  ``image``  float32 tensor (3, S, S): RGB resized to the model input side S, ImageNet-normalised; with an
             ``input_mode`` other than "squash" the image's (n, 3, S, S) windows (:mod:`dhkd.data.windows`),
             and ``windows`` their :class:`~dhkd.data.windows.WindowPlan`;
  ``label``  0 good / 1 anomalous;
  ``mask``   uint8 tensor (K, H0, W0) at the ORIGINAL resolution. ``mask_mode="binary"``: K = 1, values 0/1.
             ``mask_mode="channels"`` (MVTec LOCO): one channel per ground-truth PNG with its pixel value kept
             (it selects the defects_config entry). Good images get a single all-zero channel;
  ``path``   the image file; ``defect`` the test sub-folder name ("good" for normal images); ``size`` (H0, W0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SPLITS = ("train", "validation", "test")
# Kinds of ground truth a dataset can provide; each metric declares the kinds it needs (dhkd.eval.metrics).
IMAGE_LABELS, PIXEL_MASKS, LOCO_CHANNELS = "image_labels", "pixel_masks", "loco_channels"
GROUND_TRUTH_KINDS = (IMAGE_LABELS, PIXEL_MASKS, LOCO_CHANNELS)


class DatasetError(ValueError):
    """A dataset on disk is missing, empty, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One image on disk: its label, defect folder name and the ground-truth files that belong to it."""
    path: Path
    label: int
    defect: str
    mask_paths: tuple[Path, ...] = ()


def list_images(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    return sorted(p for p in Path(directory).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a :class:`DatasetError` naming ``what`` was expected there."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{what} not found: expected directory {path}")
    return path


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image file {path}: {e}") from None
    return img


def read_rgb(path: Path) -> Image.Image:
    """Read an image as 8-bit RGB (grayscale, palette and RGBA inputs are converted)."""
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: rescale to 8 bit first
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.max() > 0 else 1.0
        img = Image.fromarray(np.round(arr * (255.0 / top)).astype(np.uint8))
    return img.convert("RGB") if img.mode != "RGB" else img


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, read from its header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image file {path}: {e}") from None
    return h, w


def image_problem(path: Path) -> str | None:
    """Why the image file ``path`` cannot be used (missing, unreadable, truncated, empty), or None.

    Fast: PNGs are checked with Pillow's ``verify`` (every chunk's checksum, no decompression); JPEGs are
    decoded at 1/8 scale, which still reads the whole entropy-coded stream and so finds truncated files;
    other formats (BMP, TIFF: usually uncompressed) are decoded.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w < 1 or h < 1:
                return f"empty image ({w}x{h})"
            if img.format == "PNG":
                img.verify()
            else:
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        return f"cannot be read ({e})"
    return None


def check_images(paths: Sequence[Path]) -> None:
    """Raise one :class:`DatasetError` listing every file of ``paths`` that :func:`image_problem` rejects."""
    bad = [(p, why) for p in paths if (why := image_problem(p)) is not None]
    if bad:
        shown = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DatasetError(f"{len(bad)} of {len(paths)} image files are unreadable (fix or remove them):\n"
                           f"{shown}{more}")


def read_mask_values(path: Path, expected_size: tuple[int, int] | None) -> np.ndarray:
    """A ground-truth PNG as a 2-D uint8 array with its pixel values kept (colour masks: max over channels)."""
    arr = np.asarray(_open(path))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise DatasetError(f"mask {path} has values outside 0..255")
        arr = arr.astype(np.uint8)
    if expected_size is not None and arr.shape != tuple(expected_size):
        raise DatasetError(f"mask {path} has size {arr.shape[0]}x{arr.shape[1]} (HxW) but its image is "
                           f"{expected_size[0]}x{expected_size[1]}")
    return arr


def preprocess(img: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to size x size (or to (h, w)), scale to [0, 1], ImageNet-normalise, CHW float32."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class AnomalyDataset(torch.utils.data.Dataset):
    """A list of :class:`Sample` read lazily into the common item format.

    :attr:`provides` names the kinds of ground truth it has (image labels; binary pixel masks or MVTec LOCO
    channels), from which the evaluator picks the metrics. ``defects_config`` maps LOCO pixel values to
    their entries.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, *, name: str, category: str,
                 split: str, mask_mode: str = "binary", has_masks: bool = True,
                 defects_config: dict | None = None, root: Path | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if mask_mode not in ("binary", "channels"):
            raise ValueError(f"unknown mask_mode {mask_mode!r}; expected 'binary' or 'channels'")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.samples = list(samples)
        if not self.samples:
            raise DatasetError(f"the {split} split of {name} category {category!r} is empty"
                               + (f" (root {root})" if root is not None else ""))
        self.image_size = int(image_size)
        self.name, self.category, self.split = name, category, split
        self.mask_mode, self.has_masks = mask_mode, has_masks
        self.defects_config = defects_config
        self.root = root
        self._input_mode = "squash"

    @property
    def input_mode(self) -> str:
        """How an image becomes the model's S×S inputs: "squash" (resized to S×S), "pad" or "tile"
        (:mod:`dhkd.data.windows`)."""
        return self._input_mode

    @input_mode.setter
    def input_mode(self, mode: str) -> None:
        from .windows import check_input_mode

        self._input_mode = check_input_mode(mode)

    @property
    def provides(self) -> frozenset[str]:
        """The ground-truth kinds of this dataset (see :data:`GROUND_TRUTH_KINDS`)."""
        if not self.has_masks:
            return frozenset({IMAGE_LABELS})
        return frozenset({IMAGE_LABELS, LOCO_CHANNELS if self.mask_mode == "channels" else PIXEL_MASKS})

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """Per-sample labels (0 good, 1 anomalous) as an int64 array."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def mask(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """The (K, H0, W0) uint8 ground truth of one sample, without decoding its image."""
        s = self.samples[index]
        if size is None:
            size = image_size(s.path)
        if not s.mask_paths:
            return np.zeros((1, *size), dtype=np.uint8)
        arrays = [read_mask_values(p, size) for p in s.mask_paths]
        if self.mask_mode == "binary":
            return np.any(np.stack(arrays), axis=0, keepdims=False)[None].astype(np.uint8)
        for p, a in zip(s.mask_paths, arrays):
            values = np.unique(a[a > 0])
            if len(values) != 1:
                raise DatasetError(f"ground-truth channel {p} must contain exactly one positive pixel value, "
                                   f"found {values.tolist()}")
        return np.stack(arrays)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        img = read_rgb(s.path)
        size = (img.height, img.width)
        if self.input_mode == "squash":
            item = {"image": preprocess(img, self.image_size)}
        else:
            from .windows import image_windows

            windows, plan = image_windows(img, self.image_size, self.input_mode)
            item = {"image": windows, "windows": plan}
        return {
            **item,
            "label": s.label,
            "mask": torch.from_numpy(self.mask(index, size)),
            "path": str(s.path),
            "defect": s.defect,
            "size": size,
        }

    def __repr__(self) -> str:
        n_bad = int(self.labels.sum())
        return (f"{type(self).__name__}({self.name}/{self.category}, split={self.split}, "
                f"{len(self) - n_bad} good + {n_bad} anomalous, image_size={self.image_size}, "
                f"input_mode={self.input_mode})")
