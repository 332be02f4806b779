"""ELPV conversion: probability 0 good / 1 defective, the rest dropped, fixed 80/20 split of the good cells,
image labels only. The real data (elpv-dataset package) is used when installed, else the test skips."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dhkd.data import DatasetError, build_dataset
from dhkd.data.elpv import read_labels


def make_elpv(root, probs_types):
    (root / "images").mkdir(parents=True)
    lines = []
    for i, (p, t) in enumerate(probs_types):
        Image.fromarray(np.full((30, 30), 10 * i % 255, np.uint8)).save(root / "images" / f"cell{i:04d}.png")
        lines.append(f"images/cell{i:04d}.png  {p}  {t}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_conversion_and_splits(tmp_path):
    cells = [(0.0, "mono")] * 30 + [(0.0, "poly")] * 20 + [(1.0, "mono")] * 7 + [(1 / 3, "poly")] * 5 + \
            [(2 / 3, "mono")] * 4 + [(1.0, "poly")] * 3
    make_elpv(tmp_path, cells)
    split = {s: build_dataset("elpv", tmp_path, "all", s, 32, seed=0) for s in ("train", "validation", "test")}
    assert len(split["train"]) + len(split["validation"]) == 40 and len(split["validation"]) == 4
    test = split["test"]
    assert int(test.labels.sum()) == 10 and len(test) - 10 == 10          # 20 % of 50 good cells + 10 defective
    assert test.provides == {"image_labels"} and not test.has_masks
    item = test[len(test) - 1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 30, 30) and item["label"] == 1
    paths = lambda d: {s.path for s in d.samples}  # noqa: E731
    assert not paths(test) & (paths(split["train"]) | paths(split["validation"]))
    # the good test cells do not depend on the run's seed (only the validation hold-out does)
    other = build_dataset("elpv", tmp_path, "all", "test", 32, seed=5)
    assert paths(other) == paths(test)
    mono = build_dataset("elpv", tmp_path, "mono", "test", 32)
    assert int(mono.labels.sum()) == 7 and len(mono) == 7 + 6


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv"):
        build_dataset("elpv", tmp_path, "all", "test")
    with pytest.raises(ValueError, match="unknown ELPV category"):
        build_dataset("elpv", tmp_path, "tiles", "test")
    (tmp_path / "labels.csv").write_text("images/a.png  maybe  mono\n")
    with pytest.raises(DatasetError, match="not a number"):
        read_labels(tmp_path)
    make_elpv(tmp_path / "x", [(0.0, "mono")] * 12)
    (tmp_path / "x" / "images" / "cell0003.png").unlink()
    with pytest.raises(DatasetError, match="not found"):
        build_dataset("elpv", tmp_path / "x", "all", "train")


def test_installed_dataset_counts():
    pytest.importorskip("elpv_dataset")
    sizes = {s: len(build_dataset("elpv", "installed", "all", s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 1085, "validation": 121, "test": 302 + 715}
