"""Root test configuration: Triton's interpreter on machines without a GPU, the ``gpu`` marker, and the shared
fixtures (a tiny model, a tiny synthetic dataset).

TRITON_INTERPRET must be set before any @triton.jit decorator runs, hence here, before test imports.

Markers (declared in pyproject.toml): ``gpu`` tests need a CUDA device and are skipped without one (tests
parametrized with ``device="cuda"`` get the marker automatically), so ``pytest -m gpu`` runs exactly the GPU
checks on a GPU machine; ``slow`` marks the longest tests, which still run by default (``-m "not slow"``
leaves them out).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")



@pytest.fixture(autouse=True)
def _keep_the_floating_point_mode(monkeypatch):
    """Every dhkd command and the Trainer flush subnormal floats for their whole process (dhkd.denormals); the
    tests share one process and some check subnormal fp16 inputs, so here that flush does nothing
    (tests/test_denormals.py checks the real one in fresh processes)."""
    monkeypatch.setattr(torch, "set_flush_denormal", lambda mode: True)


@dataclass(frozen=True)
class SyntheticData:
    """A tiny synthetic dataset on disk: ``root``/``category`` made by :func:`dhkd.data.synthetic.ensure`."""

    root: Path
    category: str = "synthetic"
    options: dict = field(default_factory=lambda: {"size": 64, "n_train": 6, "n_test_good": 2, "n_test_defect": 3})

    def train_options(self) -> dict:
        """The data fields of a :class:`dhkd.train.TrainConfig` reading this dataset."""
        return {"dataset": "synthetic", "root": str(self.root), "category": self.category,
                "dataset_options": dict(self.options)}


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("device") == "cuda":
            item.add_marker(pytest.mark.gpu)
        if not has_gpu and item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_factory():
    """``make(**overrides)``: a fresh ``tiny``-preset DHKD (64² inputs, every module), seeded, in train mode
    (session-scoped: the factory holds no state, so module-scoped fixtures can use it too)."""
    from dhkd.models import DHKD

    def make(**overrides):
        torch.manual_seed(0)
        return DHKD.from_preset("tiny", **overrides)

    return make


@pytest.fixture
def tiny_model(tiny_model_factory):
    """A fresh, seeded ``tiny``-preset DHKD in eval mode with identity map quantiles (a deployable model)."""
    model = tiny_model_factory().eval()
    model.set_quantiles(0.0, 1.0, 0.0, 1.0)
    return model


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> SyntheticData:
    """A tiny synthetic dataset (6 good training images, 2 good and 3 defective test images, 64²), made once
    per session. Shared: tests must not change it (those that damage files make their own)."""
    from dhkd.data import synthetic

    data = SyntheticData(tmp_path_factory.mktemp("synthetic_data"))
    synthetic.ensure(data.root, data.category, **data.options)
    return data


@pytest.fixture(scope="session")
def non_square_folder(tmp_path_factory) -> Path:
    """A folder dataset (``--dataset folder``, root = its parent, category = its name) of non-square grey
    images, 64×150 (even numbers) and 100×64 (odd): 20 normal, 2 good test and 2 abnormal test images with a
    bright 16×16 square and its mask. Shared: tests must not change it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    base = tmp_path_factory.mktemp("non_square") / "strips"
    for sub in ("normal", "normal_test", "abnormal", "mask"):
        (base / sub).mkdir(parents=True)
    for sub, n in (("normal", 20), ("normal_test", 2), ("abnormal", 2)):
        for i in range(n):
            h, w = (64, 150) if i % 2 == 0 else (100, 64)
            arr = (rng.normal(120, 20, (h, w, 1)) * np.ones(3)).clip(0, 255).astype(np.uint8)
            if sub == "abnormal":
                mask = np.zeros((h, w), np.uint8)
                mask[20:36, 30:46] = 255
                arr[mask > 0] = 255
                Image.fromarray(mask).save(base / "mask" / f"{i}.png")
            Image.fromarray(arr).save(base / sub / f"{i}.png")
    return base
