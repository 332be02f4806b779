"""Datasets in one item format (see :mod:`dhkd.data.common`) and the factory :func:`build_dataset`."""
from __future__ import annotations

from pathlib import Path

from . import btad, elpv, folder, mvtec_ad, mvtec_loco, synthetic, visa
from .common import SPLITS, AnomalyDataset, DatasetError, Sample
from .splits import holdout_split
from .windows import INPUT_MODES, check_input_mode

BUILDERS = {
    "mvtec_ad": mvtec_ad.build,
    "mvtec_loco": mvtec_loco.build,
    "visa": visa.build,
    "btad": btad.build,
    "elpv": elpv.build,
    "folder": folder.build,
    "synthetic": synthetic.build,
}
DATASETS = tuple(BUILDERS)


def build_dataset(name: str, root: str | Path, category: str, split: str, image_size: int = 256,
                  seed: int = 0, input_mode: str = "squash", **options) -> AnomalyDataset:
    """Build split ``split`` ("train", "validation" or "test") of one category.

    ``seed`` selects the 10% validation hold-out of train/good where the dataset has no validation folder
    (MVTec AD, VisA, BTAD, folder, synthetic); "train" then excludes the held-out images. ``options`` go to
    the builder (folder: normal_dir, abnormal_dir, normal_test_dir, mask_dir; synthetic: generator_seed,
    size, n_train, n_test_good, n_test_defect). ELPV (image labels only) uses a fixed 80/20 split of its
    good cells; its root may be "installed" (the elpv-dataset package). ``image_size`` is the model input side S;
    ``input_mode`` how an image becomes S×S inputs (:mod:`dhkd.data.windows`).
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    check_input_mode(input_mode)
    dataset = BUILDERS[name](Path(root), category, split, image_size, seed, **options)
    dataset.input_mode = input_mode
    return dataset


__all__ = ["AnomalyDataset", "DATASETS", "DatasetError", "INPUT_MODES", "Sample", "build_dataset", "holdout_split"]
