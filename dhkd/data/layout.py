"""Reading the MVTec-AD-like folder layout shared by MVTec AD, BTAD, plain-folder VisA and the synthetic set:
<category>/{train/<good>, test/<defect>, ground_truth/<defect>/<id><suffix>.<ext>}."""
from __future__ import annotations

from pathlib import Path

from .common import IMAGE_EXTENSIONS, DatasetError, Sample, list_images, require_dir


def find_mask(gt_dir: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """The ground-truth file of image ``stem`` in ``gt_dir``: ``<stem><suffix><ext>`` for the given suffixes
    (in order) and any image extension."""
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                p = gt_dir / f"{stem}{suffix}{e}"
                if p.is_file():
                    return p
    raise DatasetError(f"no ground-truth mask for image '{stem}': expected {gt_dir / (stem + suffixes[0])}.png")


def read_train(category_dir: Path, good: str = "good") -> list[Sample]:
    """The training samples of an MVTec-style category folder (``train/<good>``)."""
    d = require_dir(category_dir / "train" / good, "training folder")
    return [Sample(p, 0, good) for p in list_images(d)]


def read_test(category_dir: Path, good: str = "good", mask_suffixes: tuple[str, ...] = ("_mask", "")
              ) -> list[Sample]:
    """All test images; anomalous ones (any folder other than ``good``) must have a ground-truth mask."""
    test_dir = require_dir(category_dir / "test", "test folder")
    samples = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for p in list_images(defect_dir):
            if defect == good:
                samples.append(Sample(p, 0, defect))
            else:
                gt = category_dir / "ground_truth" / defect
                samples.append(Sample(p, 1, defect, (find_mask(gt, p.stem, mask_suffixes),)))
    return samples
