"""benchmarks/model_grids.py: a trained model's feature-resolution maps for recipe_maps.py."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from dhkd.data import build_dataset, synthetic
from dhkd.models.calibration import normalisation_weights, normalise_maps
from dhkd.persistence import load_model
from dhkd.train import TrainConfig, Trainer


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_grids = _load("model_grids")


def test_grids_are_the_models_normalised_maps_with_the_mix_and_flip(tmp_path):
    options = {"size": 64, "n_train": 20, "n_test_good": 2, "n_test_defect": 1}
    synthetic.ensure(tmp_path / "data", "synthetic", **options)
    Trainer(TrainConfig(preset="tiny", image_size=64, teacher="random", steps=1, evaluate=False,
                        model_overrides={"cell_norm": True, "map_sigma": 1.0}, dataset="synthetic",
                        root=str(tmp_path / "data"), category="synthetic", dataset_options=options,
                        run_dir=str(tmp_path / "run"))).run()
    model = load_model(tmp_path / "run").eval()
    test = build_dataset("synthetic", str(tmp_path / "data"), "synthetic", "test", 64, **options)
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.no_grad():
        map_l, map_g = model.raw_maps(x)
        fl, fg = model.raw_maps(torch.flip(x, dims=[-1]))
    plain = model_grids.model_grids(model, test, batch_size=2)  # batches of 2 and 1 image
    assert plain.shape == (3, 1, *map_l.shape[-2:])
    # before the per-cell z-score and the smoothing, with the model's 0.5 / 0.5 weights
    np.testing.assert_allclose(plain, normalise_maps(map_l, map_g, model.map_weights()).numpy(), rtol=1e-5, atol=1e-6)
    only_l = model_grids.model_grids(model, test, lnet_weight=1.0)
    want = normalise_maps(map_l, map_g, normalisation_weights(model.quantiles, (1.0, 0.0))).numpy()
    np.testing.assert_allclose(only_l, want, rtol=1e-5, atol=1e-6)
    flipped = model_grids.model_grids(model, test, flip=True)
    want = normalise_maps(0.5 * (map_l + torch.flip(fl, dims=[-1])), 0.5 * (map_g + torch.flip(fg, dims=[-1])),
                          model.map_weights()).numpy()
    np.testing.assert_allclose(flipped, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(flipped, plain)
