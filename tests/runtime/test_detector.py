"""The deployment module runs the model's own inference path and gives the evaluator's numbers; the one
device picker; calibration and scoring shared by everything."""
import numpy as np
import pytest
import torch

from dhkd.models.calibration import fit_quantiles_on, normalisation_weights, teacher_statistics
from dhkd.models.scoring import NonFiniteMapError, check_finite, map_and_score
from dhkd.runtime import AnomalyDetector, pick_device


@pytest.fixture
def model(tiny_model_factory):
    """The seeded tiny model in eval mode with random teacher statistics and map quantiles set."""
    model = tiny_model_factory().eval()
    model.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    model.set_quantiles(0.2, 0.9, 0.05, 0.4)
    return model


def test_detector_matches_model_maps(model):
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        want = model(x)
        amap, score = AnomalyDetector(model)(x)
        small, small_score = AnomalyDetector(model, output_size=(30, 20))(x)
        map_l, map_g = model.raw_maps(x)
    torch.testing.assert_close(amap, want["anomaly_map"], rtol=0, atol=1e-6)
    torch.testing.assert_close(score, want["score"], rtol=0, atol=1e-6)
    torch.testing.assert_close(small, model.normalized_map(map_l, map_g, (30, 20)), rtol=0, atol=1e-6)
    assert small.shape == (2, 1, 30, 20) and torch.equal(small_score, small.flatten(1).amax(1))
    # the detector folds the teacher statistics into a copy: the caller's model is unchanged
    assert not model.teacher_stats_folded and float(model.teacher_std.min()) != 1.0


def test_folded_teacher_statistics_give_the_normalised_teacher(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.teacher_features(x)
        model.fold_teacher_statistics()
        torch.testing.assert_close(model.teacher_features(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="folded"):
        model.set_teacher_stats(torch.zeros(32), torch.ones(32))


def test_detector_needs_fitted_quantiles_and_says_how(tiny_model_factory):
    with pytest.raises(ValueError, match="quantiles are not fitted.*fit_quantiles.*dhkd train"):
        AnomalyDetector(tiny_model_factory())
    with pytest.raises(TypeError, match="DHKD model"):
        AnomalyDetector(torch.nn.Conv2d(3, 3, 1))


def test_calibration_fits_the_normalisation_the_model_uses(model):
    x = torch.randn(3, 3, 64, 64)
    q = fit_quantiles_on(model, [(x, ["a", "b", "c"])])
    with torch.no_grad():
        map_l, map_g = model.raw_maps(x)
    assert q["num_images"] == 3
    assert q["qa_l"] == pytest.approx(np.quantile(map_l.double().numpy(), 0.9))
    assert q["qb_g"] == pytest.approx(np.quantile(map_g.double().numpy(), 0.995))
    w_l, w_g, c = normalisation_weights((q["qa_l"], q["qb_l"], q["qa_g"], q["qb_g"]))
    assert model.map_weights() == pytest.approx((w_l, w_g, c), rel=1e-5)  # from the stored (fp32) quantiles
    # normalised map: 0.5·0.1·(m − q_a)/(q_b − q_a) per map, so q_a -> 0 and q_b -> 0.05 for each part
    assert w_l * q["qa_l"] + w_g * q["qa_g"] + c == pytest.approx(0.0, abs=1e-12)
    assert w_l * (q["qb_l"] - q["qa_l"]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="qa < qb"):
        normalisation_weights((1.0, 0.5, 0.0, 1.0))


def test_calibration_names_the_image_with_a_non_finite_map(model):
    x = torch.randn(2, 3, 64, 64)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="raw map_[lg] of broken.png is not finite"):
        fit_quantiles_on(model, [(x, ["fine.png", "broken.png"])])


def test_teacher_statistics_in_one_pass_equal_the_two_pass_definition():
    outs = [torch.full((1, 2, 3, 3), 1.0), torch.full((1, 2, 3, 3), 3.0)]
    passes = []
    mean, std = teacher_statistics(lambda: passes.append(1) or iter(outs))
    assert len(passes) == 1
    torch.testing.assert_close(mean, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    outs = [3.0 + 2.0 * torch.randn(1, 5, 8, 6, generator=g) for _ in range(7)]
    two_pass_mean = torch.stack([t.mean(dim=(0, 2, 3)) for t in outs]).mean(0)
    two_pass_var = torch.stack([((t - two_pass_mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
                                for t in outs]).mean(0)
    mean, std = teacher_statistics(lambda: iter(outs))
    torch.testing.assert_close(mean, two_pass_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std, two_pass_var.sqrt(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no teacher output"):
        teacher_statistics(lambda: iter([]))


def test_scoring_resizes_once_and_refuses_non_finite_maps():
    fmap = torch.arange(16.0).reshape(1, 1, 4, 4)
    amap, score = map_and_score(fmap, (7, 9))
    want = torch.nn.functional.interpolate(fmap, size=(7, 9), mode="bilinear", align_corners=False)
    assert torch.equal(amap, want) and torch.equal(score, want.flatten(1).amax(1))
    check_finite(amap, "ok.png")
    amap[0, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteMapError, match="anomaly map of bad.png has 1 non-finite"):
        check_finite(amap, "bad.png")


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            pick_device("cuda")


def test_a_model_trained_without_evaluation_is_deployable(synthetic_data, tmp_path):
    from dhkd.persistence import load_model
    from dhkd.train import TrainConfig, Trainer

    cfg = TrainConfig(preset="tiny", image_size=64, teacher="random", steps=1, evaluate=False,
                      run_dir=str(tmp_path / "run"), **synthetic_data.train_options())
    summary = Trainer(cfg).run()
    assert summary["quantiles"]["num_images"] >= 1 and "results" not in summary
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.has_quantiles
    with torch.no_grad():
        amap, score = AnomalyDetector(model)(torch.randn(1, 3, 64, 64))
    assert amap.shape == (1, 1, 64, 64) and bool(torch.isfinite(score).all())
