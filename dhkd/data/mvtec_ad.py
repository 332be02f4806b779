"""MVTec AD: <root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<id>_mask.png}.
No validation folder: a seeded 10% of train/good is held out as the validation split."""
from __future__ import annotations

from pathlib import Path

from .common import AnomalyDataset, require_dir
from .layout import read_test, read_train
from .splits import select_split

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
              "screw", "tile", "toothbrush", "transistor", "wood", "zipper")


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0,
          name: str = "mvtec_ad") -> AnomalyDataset:
    """The MVTec AD ``split`` of ``category`` under ``root`` (validation: a seeded hold-out of train/good)."""
    cat_dir = require_dir(Path(root) / category, f"{name} category {category!r}")
    train = read_train(cat_dir) if split != "test" else []
    test = read_test(cat_dir) if split == "test" else []
    samples = select_split(split, train, test, seed, what=str(cat_dir / "train" / "good"))
    return AnomalyDataset(samples, image_size, name=name, category=category, split=split, root=Path(root))
