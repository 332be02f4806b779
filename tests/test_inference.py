"""The deployment module gives the evaluator's numbers."""
import pytest
import torch

from dhkd.inference import AnomalyDetector
from dhkd.models import DHKD


def test_detector_matches_model_maps():
    torch.manual_seed(0)
    model = DHKD.from_preset("tiny").eval()
    model.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    model.set_quantiles(0.2, 0.9, 0.05, 0.4)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        want = model(x)
        amap, score = AnomalyDetector(model)(x)
        small, _ = AnomalyDetector(model, output_size=(30, 20))(x)
        map_l, map_g = model.raw_maps(x)
    torch.testing.assert_close(amap, want["anomaly_map"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(score, want["score"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(small, model.normalized_map(map_l, map_g, (30, 20)), rtol=1e-4, atol=1e-5)


def test_detector_needs_fitted_quantiles():
    with pytest.raises(ValueError, match="quantiles are not fitted"):
        AnomalyDetector(DHKD.from_preset("tiny"))
