"""The image score rule (``image_score_top``): the map's maximum by default, or the mean of its top P % of
values; one function for the model, the evaluator, the CLI and the exports; clear errors."""
import json

import numpy as np
import pytest
import torch

from dhkd.cli import main
from dhkd.data import build_dataset
from dhkd.eval.evaluator import evaluate_model, map_scores
from dhkd.models import DHKDConfig
from dhkd.models.scoring import image_score, map_and_score, top_count
from dhkd.persistence import load_model, save_model

SYN = dict(size=48, n_train=6, n_test_good=2, n_test_defect=3)


def test_top_percent_mean_of_the_largest_values():
    m = torch.arange(200, dtype=torch.float32).reshape(1, 1, 10, 20)
    batch = torch.cat([m, -m])
    assert image_score(m).item() == 199.0 and image_score(m, 0).item() == 199.0
    assert image_score(m, 1.0).item() == pytest.approx((199 + 198) / 2)  # 1 % of 200 values: the top 2
    assert image_score(m, 0.1).item() == 199.0  # fewer than one value: the largest one
    assert image_score(m, 100).item() == pytest.approx(99.5)
    torch.testing.assert_close(image_score(batch, 1.0), torch.tensor([198.5, -0.5]))  # per map of the batch
    assert [top_count(n, 1.0) for n in (1, 49, 50, 150, 65536)] == [1, 1, 1, 2, 655]


def test_one_hot_pixel_moves_the_top_mean_less_than_the_maximum():
    flat = torch.zeros(1, 1, 32, 32)
    spike = flat.clone()
    spike[..., 3, 30] = 10.0
    assert image_score(spike).item() == 10.0
    assert image_score(spike, 1.0).item() == pytest.approx(10.0 / top_count(1024, 1.0))


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), True, "1"])
def test_bad_rules_are_named(bad):
    with pytest.raises(ValueError, match="image_score_top"):
        image_score(torch.zeros(1, 1, 4, 4), bad)
    with pytest.raises(ValueError, match="image_score_top"):
        DHKDConfig(image_score_top=bad)


def test_map_and_score_and_evaluator_use_the_same_rule():
    fmap = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    amap, score = map_and_score(fmap, (30, 20), top_percent=2.0)
    torch.testing.assert_close(score, image_score(amap, 2.0))
    maps = [amap[i, 0].numpy() for i in range(2)]
    np.testing.assert_allclose(map_scores(maps, 2.0), score.double().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(map_scores(maps), [m.max() for m in maps])


def test_model_scores_with_its_rule_and_keeps_it_when_saved(tiny_model_factory, tmp_path):
    model = tiny_model_factory(image_score_top=1.0).eval()
    model.set_quantiles(0.0, 1.0, 0.0, 1.0)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out["score"], image_score(out["anomaly_map"], 1.0))
    assert (out["score"] < out["anomaly_map"].flatten(1).amax(1)).all()
    save_model(model, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").image_score_top == 1.0


def test_evaluation_reports_the_rule_and_the_cli_can_override_it(tiny_model_factory, tmp_path):
    root = tmp_path / "data"
    build_dataset("synthetic", root, "synthetic", "test", 64, **SYN)
    model = tiny_model_factory(image_score_top=5.0).eval()
    model.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    res = evaluate_model(model, "synthetic", root, "synthetic", tmp_path / "top", export_maps=True, **SYN)
    assert res["map"]["image_score"] == "mean of the map's top 5 %"
    assert "image score: mean of the map's top 5 %" in (tmp_path / "top" / "results.md").read_text()
    save_model(model, tmp_path / "run" / "model.safetensors")
    common = ["--dataset", "synthetic", "--root", str(root), "--category", "synthetic"]
    # the model form takes the model's rule unless told otherwise
    assert main(["evaluate", "--model", str(tmp_path / "run"), *common, "--output", str(tmp_path / "own")]) == 0
    own = json.loads((tmp_path / "own" / "results.json").read_text())
    assert [im["score"] for im in own["images"]] == pytest.approx([im["score"] for im in res["images"]], abs=1e-6)
    assert main(["evaluate", "--model", str(tmp_path / "run"), *common, "--output", str(tmp_path / "max"),
                 "--image-score-top", "0"]) == 0
    maxed = json.loads((tmp_path / "max" / "results.json").read_text())
    assert maxed["map"]["image_score"] == "maximum of the map"
    assert all(m["score"] > t["score"] for m, t in zip(maxed["images"], own["images"]))
    # the maps form: the maximum unless told otherwise; the written maps score as the model scored them
    maps = tmp_path / "top" / "anomaly_maps"
    assert main(["evaluate", "--maps", str(maps), *common, "--output", str(tmp_path / "m5"),
                 "--image-score-top", "5"]) == 0
    again = json.loads((tmp_path / "m5" / "results.json").read_text())
    assert [im["score"] for im in again["images"]] == pytest.approx([im["score"] for im in res["images"]], abs=1e-6)
    with pytest.raises(SystemExit, match="--image-score-top"):
        main(["evaluate", "--maps", str(maps), *common, "--output", str(tmp_path / "bad"), "--image-score-top", "101"])
