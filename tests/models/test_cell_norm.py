"""The recipe's scoring options (``cell_norm``, ``map_sigma``): per-cell statistics fitted on good validation
maps after the quantiles, the smoothing equal to scipy's, the default map unchanged, saved with the weights,
clear errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from dhkd.data import build_dataset
from dhkd.models import DHKD, DHKDConfig, preset
from dhkd.models.calibration import (cell_statistics, fit_cell_statistics, fit_quantiles, fit_quantiles_on,
                                     normalise_maps)
from dhkd.models.scoring import smooth_map
from dhkd.persistence import load_model, save_model
from dhkd.runtime import AnomalyDetector

RECIPE = {"cell_norm": True, "map_sigma": 1.0}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def recipe_model(tiny_model_factory):
    """A tiny recipe model calibrated (quantiles and cell statistics) on 5 images."""
    model = tiny_model_factory(**RECIPE).eval()
    model.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    fit_quantiles_on(model, [(_images(5), [f"good{i}" for i in range(5)])])
    return model


def test_cell_statistics_make_the_good_maps_zero_mean_per_cell(recipe_model):
    x = _images(5)
    with torch.no_grad():
        norm = normalise_maps(*recipe_model.raw_maps(x), recipe_model.map_weights()).double()
    z = (norm - recipe_model.cell_mean.double()) / recipe_model.cell_std.double()
    assert z.shape == (5, 1, 16, 16)
    torch.testing.assert_close(z.mean(0), torch.zeros(1, 16, 16, dtype=torch.float64), rtol=0, atol=1e-4)
    # the std of the recipe: per-cell std (ddof 0) plus the median of it as a floor
    sd = norm.numpy().std(0, keepdims=True)
    np.testing.assert_allclose(recipe_model.cell_std.double().numpy(), sd + np.median(sd), rtol=1e-5)
    # statistics at feature resolution of the training size, in the state dict only for cell_norm models
    assert recipe_model.cell_mean.shape == (1, 1, *recipe_model.feature_size((64, 64)))
    assert not any("cell_" in k for k in DHKD.from_preset("tiny").state_dict())


def test_scoring_is_zscore_then_scipy_gauss_at_feature_resolution(tiny_model_factory):
    model = tiny_model_factory(cell_norm=True, map_sigma=1.3).eval()  # radius int(4σ+0.5) = 5 as scipy's
    fit_quantiles_on(model, [(_images(4), list("abcd"))])
    x = _images(2, seed=1)
    with torch.no_grad():
        map_l, map_g = model.raw_maps(x)
        got, score = model.score_raw_maps(map_l, map_g, tuple(map_l.shape[-2:]))  # the resize is the identity
    norm = normalise_maps(map_l, map_g, model.map_weights()).double().numpy()
    z = (norm - model.cell_mean.double().numpy()) / model.cell_std.double().numpy()
    want = np.stack([gaussian_filter(m, sigma=(0, 1.3, 1.3), mode="reflect") for m in z])
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(score.numpy(), want.reshape(2, -1).max(1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.7])
@pytest.mark.parametrize("shape", [(16, 16), (5, 9), (2, 3)])  # (2, 3): the kernel is wider than the map
def test_smoothing_matches_scipy_reflect(sigma, shape):
    m = torch.randn(3, 1, *shape, generator=torch.Generator().manual_seed(2))
    want = np.stack([gaussian_filter(a, sigma=(0, sigma, sigma), mode="reflect") for a in m.double().numpy()])
    np.testing.assert_allclose(smooth_map(m, sigma).double().numpy(), want, rtol=0, atol=1e-5)
    assert smooth_map(m, 0.0) is m


def test_default_config_scores_exactly_as_before(tiny_model):
    assert tiny_model.config.cell_norm is False and tiny_model.config.map_sigma == 0.0
    assert preset("paper") == DHKDConfig() and not DHKDConfig().cell_norm
    x = _images(2)
    with torch.no_grad():
        out = tiny_model(x)
        before = normalise_maps(*tiny_model.raw_maps(x), tiny_model.map_weights())
    before = F.interpolate(before, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(out["anomaly_map"], before)
    assert torch.equal(out["score"], before.flatten(1).amax(1))


def test_maps_of_another_size_use_resized_statistics(recipe_model):
    x = torch.randn(1, 3, 80, 64)
    with torch.no_grad():
        map_l, map_g = recipe_model.raw_maps(x)
        got, _ = recipe_model.score_raw_maps(map_l, map_g, tuple(map_l.shape[-2:]))
    size = tuple(map_l.shape[-2:])
    assert size != tuple(recipe_model.cell_mean.shape[-2:])
    mean, std = (F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                 for t in (recipe_model.cell_mean, recipe_model.cell_std))
    want = smooth_map((normalise_maps(map_l, map_g, recipe_model.map_weights()) - mean) / std, 1.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_save_load_round_trip_keeps_the_statistics(recipe_model, tmp_path):
    save_model(recipe_model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors").eval()
    assert loaded.config == recipe_model.config and loaded.has_cell_statistics
    assert torch.equal(loaded.cell_mean, recipe_model.cell_mean) and torch.equal(loaded.cell_std, recipe_model.cell_std)
    x = _images(2, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(x)["anomaly_map"], recipe_model(x)["anomaly_map"])


def test_fit_cell_statistics_on_a_dataset_equals_the_fit_with_the_quantiles(tiny_model_factory, synthetic_data):
    good = build_dataset("synthetic", synthetic_data.root, synthetic_data.category, "test", 64,
                         **synthetic_data.options)  # 2 good images (the defective ones are skipped)
    model = tiny_model_factory(**RECIPE).eval()
    q = fit_quantiles(model, good)
    assert q["cell_statistics"] == {"num_images": 2, "cells": [16, 16]}
    mean, std = model.cell_mean.clone(), model.cell_std.clone()
    model.set_quantiles(q["qa_l"], q["qb_l"], q["qa_g"], q["qb_g"])  # new quantiles: the old statistics go
    assert not model.has_cell_statistics
    assert fit_cell_statistics(model, good) == {"num_images": 2, "cells": [16, 16]}
    assert torch.equal(model.cell_mean, mean) and torch.equal(model.cell_std, std)


def test_clear_errors(tiny_model_factory, recipe_model):
    model = tiny_model_factory(**RECIPE).eval()
    with pytest.raises(ValueError, match="at least 2 good validation images, got 1"):
        fit_quantiles_on(model, [(_images(1), ["only.png"])])
    model.set_quantiles(0.0, 1.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="per-cell map statistics are not fitted.*fit_quantiles"):
        model(_images(1))
    with pytest.raises(ValueError, match="per-cell map statistics are not fitted"):
        AnomalyDetector(model)
    with pytest.raises(ValueError, match="not finite"):
        cell_statistics(torch.tensor([1.0, float("inf")]).reshape(2, 1, 1, 1).expand(2, 1, 3, 3))
    with pytest.raises(ValueError, match="degenerate"):
        cell_statistics(torch.ones(3, 1, 4, 4))
    with pytest.raises(ValueError, match=r"cell statistics must be \(16, 16\)"):
        model.set_cell_statistics(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="std > 0"):
        model.set_cell_statistics(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    plain = tiny_model_factory().eval()
    with pytest.raises(RuntimeError, match="cell_norm=False"):
        plain.set_cell_statistics(recipe_model.cell_mean, recipe_model.cell_std)
    with pytest.raises(ValueError, match="cell_norm=False"):
        fit_cell_statistics(plain, None)
    with pytest.raises(ValueError, match="map_sigma must be a finite number >= 0"):
        DHKDConfig(map_sigma=-1.0)
    with pytest.raises(ValueError, match="cell_norm must be true or false"):
        DHKDConfig(cell_norm="yes")
