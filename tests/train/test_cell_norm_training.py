"""The trainer fits the recipe's per-cell map statistics right after the quantiles (every trained model stays
deployable), and refuses a validation split too small for them before training."""
import pytest
import torch

from dhkd.data import synthetic
from dhkd.persistence import load_model
from dhkd.runtime import AnomalyDetector
from dhkd.train import TrainConfig, Trainer

RUN = {"preset": "tiny", "image_size": 64, "teacher": "random", "steps": 1, "evaluate": False,
       "model_overrides": {"cell_norm": True, "map_sigma": 1.0}}


def test_a_trained_cell_norm_model_is_deployable(tmp_path):
    options = {"size": 64, "n_train": 20, "n_test_good": 1, "n_test_defect": 1}  # 2 validation images
    synthetic.ensure(tmp_path / "data", "synthetic", **options)
    cfg = TrainConfig(**RUN, dataset="synthetic", root=str(tmp_path / "data"), category="synthetic",
                      dataset_options=options, run_dir=str(tmp_path / "run"))
    summary = Trainer(cfg).run()
    assert summary["quantiles"]["cell_statistics"] == {"num_images": 2, "cells": [16, 16]}
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.config.cell_norm and model.config.map_sigma == 1.0 and model.has_cell_statistics
    with torch.no_grad():
        amap, score = AnomalyDetector(model)(torch.randn(1, 3, 64, 64))
    assert amap.shape == (1, 1, 64, 64) and bool(torch.isfinite(score).all())


def test_too_few_validation_images_fail_before_training(synthetic_data, tmp_path):
    cfg = TrainConfig(**dict(RUN, **synthetic_data.train_options()), run_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="cell_norm needs at least 2 good validation images.* has 1"):
        Trainer(cfg).run()
    assert not (tmp_path / "run").exists()
