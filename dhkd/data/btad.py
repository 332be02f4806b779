"""BTAD (beanTech): <root>/<01|02|03>/{train/ok, test/{ok,ko}, ground_truth/ko/<id>.<png|bmp>}.
Good images are in the "ok" folders; a seeded 10% of train/ok is held out for validation."""
from __future__ import annotations

from pathlib import Path

from .common import AnomalyDataset, require_dir
from .layout import read_test, read_train
from .splits import select_split

CATEGORIES = ("01", "02", "03")


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0) -> AnomalyDataset:
    """The BTAD ``split`` of ``category`` (``ok``/``ko`` folders) under ``root``."""
    cat_dir = require_dir(Path(root) / category, f"btad category {category!r}")
    train = read_train(cat_dir, good="ok") if split != "test" else []
    test = read_test(cat_dir, good="ok", mask_suffixes=("", "_mask")) if split == "test" else []
    samples = select_split(split, train, test, seed, what=str(cat_dir / "train" / "ok"))
    return AnomalyDataset(samples, image_size, name="btad", category=category, split=split, root=Path(root))
