"""A generic folder dataset: <base>/<normal_dir> (normal training images), optional <normal_test_dir> (good
test images), <abnormal_dir> (anomalous test images) and <mask_dir> (their masks, <id>_mask.<ext> or <id>.<ext>).
<base> is <root>/<category>, or <root> when the category is empty. Folder names may also be absolute paths.
A seeded 10% of the normal images is held out for validation."""
from __future__ import annotations

from pathlib import Path

from .common import AnomalyDataset, Sample, list_images, require_dir
from .layout import find_mask
from .splits import select_split


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0, *,
          normal_dir: str = "normal", abnormal_dir: str = "abnormal", normal_test_dir: str = "normal_test",
          mask_dir: str = "mask") -> AnomalyDataset:
    """A dataset from plain folders of normal, abnormal and good test images (and optional masks)."""
    base = require_dir(Path(root) / category if category else Path(root), "folder dataset")
    normal = require_dir(base / normal_dir, "normal-image folder")
    abnormal, good_test, masks = base / abnormal_dir, base / normal_test_dir, base / mask_dir
    has_masks = masks.is_dir()
    train, test = [], []
    if split == "test":
        if good_test.is_dir():
            test += [Sample(p, 0, "good") for p in list_images(good_test)]
        if abnormal.is_dir():
            for p in list_images(abnormal):
                mask = (find_mask(masks, p.stem, ("_mask", "")),) if has_masks else ()
                test.append(Sample(p, 1, abnormal.name, mask))
    else:
        train = [Sample(p, 0, "good") for p in list_images(normal)]
    samples = select_split(split, train, test, seed, what=str(normal))
    return AnomalyDataset(samples, image_size, name="folder", category=category or base.name, split=split,
                          has_masks=has_masks, root=Path(root))
