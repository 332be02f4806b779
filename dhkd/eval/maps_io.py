"""Anomaly maps as float32 TIFF files in the official layout <dir>/<category>/test/<defect>/<id>.tiff."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

TIFF_EXTENSIONS = (".tiff", ".tif", ".TIFF", ".TIF")


def map_path(maps_root: Path, category: str, defect: str, image_path: Path) -> Path:
    """Where the TIFF map of a test image goes: ``<maps_root>/<category>/test/<defect>/<stem>.tiff``."""
    return Path(maps_root) / category / "test" / defect / f"{Path(image_path).stem}.tiff"


def write_map(path: Path, amap: np.ndarray) -> None:
    """Write an anomaly map as a float32 TIFF, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.ascontiguousarray(amap, dtype=np.float32))


def resolve_maps_base(maps_dir: Path, dataset: str, category: str) -> Path:
    """The folder holding ``test/<defect>/`` for ``category``: ``maps_dir`` may be that folder itself, its
    parent (``<maps_dir>/<category>``), or an output folder with ``anomaly_maps/[<dataset>/]<category>``."""
    maps_dir = Path(maps_dir)
    candidates = [maps_dir / category, maps_dir, maps_dir / "anomaly_maps" / category,
                  maps_dir / "anomaly_maps" / dataset / category, maps_dir / dataset / category]
    for c in candidates:
        if (c / "test").is_dir():
            return c
    raise FileNotFoundError(f"no anomaly maps for category {category!r} under {maps_dir}: expected "
                            f"{maps_dir / category / 'test' / '<defect>' / '<id>.tiff'}")


def read_map(base: Path, defect: str, image_path: Path, expected_shape: tuple[int, int]) -> np.ndarray:
    """The 2-D map of one test image (any TIFF extension); its shape must equal the image's (H, W)."""
    stem = Path(image_path).stem
    for ext in TIFF_EXTENSIONS:
        p = Path(base) / "test" / defect / f"{stem}{ext}"
        if p.is_file():
            break
    else:
        raise FileNotFoundError(f"anomaly map missing for test image {image_path}: expected "
                                f"{Path(base) / 'test' / defect / (stem + '.tiff')}")
    try:
        arr = np.squeeze(tifffile.imread(p))
    except Exception as e:  # tifffile raises several exception types for broken files
        raise ValueError(f"cannot read anomaly map {p}: {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"anomaly map {p} must be 2-D, got shape {arr.shape}")
    if arr.shape != tuple(expected_shape):
        raise ValueError(f"anomaly map {p} has shape {arr.shape} but its image is {tuple(expected_shape)} (H, W);"
                         " maps must be at the original image resolution")
    arr = arr.astype(np.float32, copy=False) if arr.dtype != np.float64 else arr
    if not np.isfinite(arr).all():
        raise ValueError(f"anomaly map {p} contains NaN or infinity")
    return arr
