"""The metric registry: metrics chosen by the ground truth a dataset provides, registration rules, and the
typed results of a dataset without masks (image metrics only, said so in the results)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dhkd.data import build_dataset
from dhkd.eval.evaluator import evaluate_scorer
from dhkd.eval.metrics import MetricInputs, MetricOutput, compute_metrics, metrics_for, registry
from dhkd.eval.report import EvaluationResult, ImageScore, MapInfo


@pytest.fixture
def private_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


def names(provides):
    return [m.name for m in metrics_for(provides)]


def test_metrics_follow_the_ground_truth_provided():
    assert names({"image_labels"}) == ["image_auroc"]
    assert names({"image_labels", "pixel_masks"}) == ["image_auroc", "pixel_auroc", "au_pro"]
    assert names({"image_labels", "loco_channels"}) == ["loco"]  # its per-subset image AUROC replaces the plain one
    assert names(set()) == []


def test_adding_a_metric_is_one_function_and_one_registration(private_registry):
    @private_registry.register_metric("mean_score_gap", needs={"image_labels"},
                                      definitions={"mean_score_gap": "mean anomalous minus mean good score"})
    def gap(inputs: MetricInputs) -> MetricOutput:
        return MetricOutput({"mean_score_gap": float(inputs.scores[inputs.labels == 1].mean()
                                                     - inputs.scores[inputs.labels == 0].mean())})

    maps = [np.full((4, 4), v, np.float32) for v in (0.0, 1.0, 3.0)]
    inputs = MetricInputs(maps=maps, scores=np.array([0.0, 1.0, 3.0]), labels=np.array([0, 0, 1]))
    res = compute_metrics(inputs, {"image_labels"})
    assert res.computed == ["image_auroc", "mean_score_gap"]
    assert res.values == {"image_auroc": 1.0, "mean_score_gap": 2.5}
    assert set(res.definitions) == {"image_auroc", "mean_score_gap"}


def test_registration_errors(private_registry):
    with pytest.raises(ValueError, match="unknown ground-truth kinds"):
        private_registry.register_metric("x", needs={"depth_maps"}, definitions={"x": "."})
    with pytest.raises(ValueError, match="already registered"):
        private_registry.register_metric("image_auroc", needs={"image_labels"}, definitions={"a": "."})(
            lambda inputs: None)

    @private_registry.register_metric("liar", needs={"image_labels"}, definitions={"liar": "."})
    def liar(inputs):
        return MetricOutput({"other": 1.0})

    inputs = MetricInputs(maps=[np.zeros((2, 2))], scores=np.zeros(1), labels=np.zeros(1, dtype=int))
    with pytest.raises(ValueError, match="undeclared outputs"):
        compute_metrics(inputs, {"image_labels"})


def test_a_dataset_without_masks_gets_image_metrics_only(tmp_path):
    for folder, value in (("normal", 60), ("normal_test", 60), ("abnormal", 200)):
        (tmp_path / folder).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 20, 3), value + i, np.uint8)).save(tmp_path / folder / f"{i}.png")
    test = build_dataset("folder", tmp_path, "", "test", 16)
    assert test.provides == {"image_labels"}
    res = evaluate_scorer(lambda x: x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 1, 4, 4), test,
                          tmp_path / "out", source="mean red")
    assert res["metrics"] == {"image_auroc": 1.0} and res["ground_truth"] == ["image_labels"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == res and set(saved["metric_definitions"]) == {"image_auroc"}
    assert "image-level metrics only" in (tmp_path / "out" / "results.md").read_text()


def test_typed_result_serialises_to_the_results_json_layout():
    metrics = compute_metrics(MetricInputs(maps=[np.zeros((2, 2)), np.ones((2, 2))], scores=np.array([0.0, 1.0]),
                                           labels=np.array([0, 1])), {"image_labels"})
    result = EvaluationResult("d", "c", "test", ("image_labels",), MapInfo("m", 0.0), metrics,
                              [ImageScore("a.png", "good", 0, 0.0), ImageScore("b.png", "bad", 1, 1.0)],
                              extra={"quantiles": {"qa": 1.0}})
    d = result.to_dict()
    assert list(d) == ["dataset", "category", "split", "num_images", "num_anomalous", "ground_truth", "map",
                       "metrics", "metric_definitions", "details", "quantiles", "images"]
    assert d["num_images"] == 2 and d["num_anomalous"] == 1 and d["metrics"] == {"image_auroc": 1.0}
    assert d["map"] == {"resolution": "original image size", "clamped": False, "smoothing_sigma": 0.0, "source": "m",
                        "image_score": "maximum of the map"}
    json.dumps(d)
