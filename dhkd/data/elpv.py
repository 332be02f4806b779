"""ELPV: 2,624 electroluminescence images (300×300, 8-bit grayscale) of solar cells, each with a defect
probability (0, 1/3, 2/3 or 1) and a cell type ("mono" or "poly"). Image-level labels only: no masks.

Layout: ``<root>/labels.csv`` (whitespace-separated ``images/cellNNNN.png  probability  type`` lines) and
``<root>/images/``. ``root`` may be ``"installed"`` (or empty) to use the copy shipped in the
``elpv-dataset`` package (``pip install 'dhkd[elpv]'``; the data are CC BY-NC-SA: evaluation only).

Conversion to an anomaly-detection split: probability 0 = good, 1 = defective, 1/3 and 2/3 are dropped
(uncertain). The good cells are split 80/20 with ``numpy.random.default_rng(GOOD_SPLIT_SEED)``, a fixed seed
independent of the run's ``seed``: 80 % are training images (of which the run's seeded 10 % hold-out is the
validation split), 20 % plus every defective cell are the test split. Categories: ``all``, ``mono``, ``poly``
(the cell type; the good split is made per category).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import AnomalyDataset, DatasetError, Sample
from .splits import select_split

CATEGORIES = ("all", "mono", "poly")
GOOD_SPLIT_SEED = 0
TEST_GOOD_FRACTION = 0.2
INSTALLED = "installed"


def installed_root() -> Path:
    """The data folder of the installed ``elpv-dataset`` package."""
    try:
        import elpv_dataset
    except ImportError:
        raise DatasetError("ELPV root 'installed' needs the elpv-dataset package: "
                           "pip install elpv-dataset (or pip install 'dhkd[elpv]')") from None
    return Path(elpv_dataset.__file__).parent / "data"


def read_labels(root: Path) -> list[tuple[Path, float, str]]:
    """(image path, defect probability, cell type) per line of ``<root>/labels.csv``."""
    labels = Path(root) / "labels.csv"
    if not labels.is_file():
        raise DatasetError(f"ELPV labels not found: expected {labels}")
    rows = []
    for n, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DatasetError(f"{labels}:{n}: expected 'path probability type', found {line!r}")
        try:
            prob = float(parts[1])
        except ValueError:
            raise DatasetError(f"{labels}:{n}: probability {parts[1]!r} is not a number") from None
        rows.append((Path(root) / parts[0], prob, parts[2]))
    if not rows:
        raise DatasetError(f"{labels} lists no image")
    return rows


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0) -> AnomalyDataset:
    """One split of ELPV (see the module docstring for the conversion)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown ELPV category {category!r}; expected one of {', '.join(CATEGORIES)}")
    root = installed_root() if str(root) in ("", ".", INSTALLED) else Path(root)
    rows = [r for r in read_labels(root) if category == "all" or r[2] == category]
    good = [Sample(p, 0, "good") for p, prob, _ in rows if prob == 0.0]
    defective = [Sample(p, 1, "defective") for p, prob, _ in rows if prob == 1.0]
    if len(good) < 10:
        raise DatasetError(f"ELPV {category}: only {len(good)} good cells in {root / 'labels.csv'}")
    is_test = np.zeros(len(good), dtype=bool)
    order = np.random.default_rng(GOOD_SPLIT_SEED).permutation(len(good))
    is_test[order[:int(round(TEST_GOOD_FRACTION * len(good)))]] = True
    train = [s for s, t in zip(good, is_test) if not t]
    test = [s for s, t in zip(good, is_test) if t] + defective
    samples = select_split(split, train, test, seed, what=f"ELPV {category} good cells")
    missing = next((s.path for s in samples if not s.path.is_file()), None)
    if missing is not None:
        raise DatasetError(f"ELPV image listed in {root / 'labels.csv'} not found: {missing}")
    return AnomalyDataset(samples, image_size, name="elpv", category=category, split=split, has_masks=False,
                          root=root)
