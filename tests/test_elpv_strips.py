"""benchmarks/elpv_strips.py: the non-square set made from ELPV cells, and its per-length breakdown."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "elpv_strips.py"
_spec = importlib.util.spec_from_file_location("elpv_strips", _SCRIPT)
elpv_strips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(elpv_strips)


@pytest.fixture
def cells(tmp_path):
    """Three 300×300 cells, each filled with its own grey value."""
    paths = []
    for i, value in enumerate((10, 20, 30)):
        paths.append(tmp_path / f"c{i}.png")
        Image.fromarray(np.full((300, 300), value, np.uint8)).save(paths[-1])
    return paths


@pytest.mark.parametrize("keep", [None, 0, 1, 2])
def test_strips_are_cropped_to_varied_lengths_and_keep_the_defective_cell_whole(cells, keep):
    rng = np.random.default_rng(0)
    for _ in range(30):
        arr, start, width = elpv_strips._strip(cells, keep, rng)
        assert arr.shape == (300, width) and 750 <= width <= 900 and 0 <= start <= 900 - width
        if keep is not None:  # the defective cell's 300 columns are all inside the crop
            assert start <= keep * 300 and (keep + 1) * 300 <= start + width
            assert (arr == 10 * (keep + 1)).sum(axis=1).min() == 300
    arr, start, width = elpv_strips._strip(cells[:1], None, rng)
    assert (arr.shape, start, width) == ((300, 300), 0, 300)


def test_auroc_by_cells_splits_the_evaluation_by_strip_length():
    manifest = {"strips": [{"file": f"{folder}/{i}.png", "cells": ["c"] * k}
                           for i, (folder, k) in enumerate([("normal_test", 1), ("abnormal", 1), ("normal_test", 2),
                                                            ("abnormal", 2), ("normal_test", 3), ("abnormal", 3)])]}
    scores = [0.1, 0.9, 0.5, 0.4, 0.2, 0.3]  # 1 and 3 cells ranked right, 2 cells wrong
    images = [{"path": f"/data/elpv_strips/{s['file']}", "label": int(s["file"].startswith("abnormal")), "score": v}
              for s, v in zip(manifest["strips"], scores)]
    out = elpv_strips.auroc_by_cells({"images": images}, manifest)
    assert out == {"all": pytest.approx(100 * 7 / 9), "1 cells": 100.0, "2 cells": 0.0, "3 cells": 100.0}
