"""benchmarks/rescore_model.py: a trained model's scoring switched (per-cell z-score off, another sigma)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from dhkd.data import synthetic
from dhkd.persistence import load_model
from dhkd.train import TrainConfig, Trainer

_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "rescore_model.py"
_spec = importlib.util.spec_from_file_location("rescore_model", _SCRIPT)
rescore_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rescore_model)


def test_rescored_model_switches_the_scoring_and_keeps_the_weights(tmp_path):
    options = {"size": 64, "n_train": 20, "n_test_good": 1, "n_test_defect": 1}  # 2 validation images
    synthetic.ensure(tmp_path / "data", "synthetic", **options)
    Trainer(TrainConfig(preset="tiny", image_size=64, teacher="random", steps=1, evaluate=False,
                        model_overrides={"cell_norm": True, "map_sigma": 1.0}, dataset="synthetic",
                        root=str(tmp_path / "data"), category="synthetic", dataset_options=options,
                        run_dir=str(tmp_path / "run"))).run()
    trained = load_model(tmp_path / "run" / "model.safetensors").eval()
    kept = rescore_model.rescored_model(tmp_path / "run")
    raw = rescore_model.rescored_model(tmp_path / "run" / "model.safetensors", no_cell_norm=True, map_sigma=0.0)
    assert (kept.config.cell_norm, kept.config.map_sigma) == (True, 1.0)
    assert (raw.config.cell_norm, raw.config.map_sigma) == (False, 0.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(kept.detect(x)[0], trained.detect(x)[0])
        assert not torch.allclose(raw.detect(x)[0], trained.detect(x)[0])
        map_l, map_g = trained.raw_maps(x)
        assert torch.equal(raw.raw_maps(x)[0], map_l)  # same weights: only the scoring differs
    with pytest.raises(ValueError, match="map_sigma must be a finite number >= 0"):
        rescore_model.rescored_model(tmp_path / "run", map_sigma=-1.0)
