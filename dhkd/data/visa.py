"""VisA, in either layout:
  * the original release with <root>/split_csv/1cls.csv (columns object, split, label, image, mask; paths
    relative to <root>; label "normal" or "anomaly");
  * plain folders <root>/<category>/{train/good, test/{good,bad}, ground_truth/bad/<id>.png} (as converted by
    anomalib). Masks are binarised (any non-zero value is a defect).
No validation split: a seeded 10% of the normal training images is held out."""
from __future__ import annotations

import csv
from pathlib import Path

from .common import AnomalyDataset, DatasetError, Sample, require_dir
from .layout import read_test, read_train
from .splits import select_split

CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
              "pcb3", "pcb4", "pipe_fryum")
CSV_PATH = Path("split_csv") / "1cls.csv"


def _from_csv(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    csv_path = root / CSV_PATH
    train, test = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{csv_path} lacks the column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if row["object"] != category:
                continue
            label_name = row["label"].strip().lower()
            if label_name not in ("normal", "anomaly"):
                raise DatasetError(f"{csv_path} line {line}: label {row['label']!r} is not normal/anomaly")
            path = root / row["image"]
            if not path.is_file():
                raise DatasetError(f"{csv_path} line {line}: image file not found: {path}")
            if label_name == "normal":
                sample = Sample(path, 0, "good")
            else:
                if not row["mask"]:
                    raise DatasetError(f"{csv_path} line {line}: anomalous image {path} has no mask")
                sample = Sample(path, 1, "bad", (root / row["mask"],))
            split = row["split"].strip().lower()
            if split == "train":
                if sample.label:
                    raise DatasetError(f"{csv_path} line {line}: anomalous image in the train split")
                train.append(sample)
            elif split == "test":
                test.append(sample)
            else:
                raise DatasetError(f"{csv_path} line {line}: split {row['split']!r} is not train/test")
    if not train and not test:
        raise DatasetError(f"category {category!r} not found in {csv_path}")
    return train, test


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0) -> AnomalyDataset:
    """The VisA ``split`` of ``category`` under ``root``, from ``split_csv/1cls.csv`` or plain folders."""
    root = Path(root)
    if (root / CSV_PATH).is_file():
        train, test = _from_csv(root, category)
        what = f"{root / CSV_PATH} ({category}, train)"
    else:
        cat_dir = require_dir(root / category, f"visa category {category!r} (and no {CSV_PATH} under {root})")
        train = read_train(cat_dir) if split != "test" else []
        test = read_test(cat_dir, mask_suffixes=("", "_mask")) if split == "test" else []
        what = str(cat_dir / "train" / "good")
    samples = select_split(split, train, test, seed, what=what)
    return AnomalyDataset(samples, image_size, name="visa", category=category, split=split, root=root)
