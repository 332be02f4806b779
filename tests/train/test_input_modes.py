"""A model trained with input_mode "tile" or "pad" on non-square images: training, evaluation, `dhkd predict`,
the deployment detector and torch.export all see the same windows and give the same map and score."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dhkd.cli import main
from dhkd.data import build_dataset
from dhkd.eval.evaluator import anomaly_maps, evaluate_model
from dhkd.persistence import load_model
from dhkd.runtime import AnomalyDetector, export_program
from dhkd.train import TrainConfig, Trainer


@pytest.fixture(scope="module", params=["tile", "pad"])
def trained(request, non_square_folder, tmp_path_factory):
    mode = request.param
    run = tmp_path_factory.mktemp(f"run_{mode}")
    cfg = TrainConfig(preset="tiny", image_size=64, teacher="random", steps=2, evaluate=False, log_every=1,
                      dataset="folder", root=str(non_square_folder.parent), category=non_square_folder.name, run_dir=str(run),
                      model_overrides={"input_mode": mode, "cell_norm": True, "map_sigma": 1.0,
                                       "image_score_top": 1.0})
    summary = Trainer(cfg).run()
    return mode, run, summary


def test_training_sees_every_window_and_the_saved_model_keeps_its_mode(trained, non_square_folder):
    mode, run, summary = trained
    assert load_model(run / "model.safetensors").input_mode == mode
    validation = build_dataset("folder", non_square_folder.parent, non_square_folder.name, "validation", 64, input_mode=mode)
    windows = sum(validation[i]["image"].shape[0] for i in range(len(validation)))
    assert summary["quantiles"]["num_images"] == windows  # one calibration map per window


def test_evaluation_predict_detector_and_export_agree(trained, non_square_folder, tmp_path):
    mode, run, _ = trained
    model = load_model(run / "model.safetensors").eval()
    results = evaluate_model(model, "folder", non_square_folder.parent, non_square_folder.name, tmp_path / "eval")
    scores = {im["path"]: im["score"] for im in results["images"]}
    assert len(scores) == 4 and all(np.isfinite(list(scores.values())))
    test = build_dataset("folder", non_square_folder.parent, non_square_folder.name, "test", 64, input_mode=mode)
    maps = {item["path"]: m for item, m in anomaly_maps(model, test)}
    assert {k: m.shape for k, m in maps.items()} == {it.path.as_posix(): Image.open(it.path).size[::-1]
                                                     for it in test.samples}

    assert main(["predict", str(non_square_folder / "abnormal"), "--model", str(run), "--output", str(tmp_path / "p"),
                 "--no-heatmaps"]) == 0
    for entry in json.loads((tmp_path / "p" / "scores.json").read_text())["images"]:
        assert entry["score"] == pytest.approx(scores[entry["path"]], rel=1e-5, abs=1e-6)

    item = test[len(test) - 1]  # an abnormal 100×64 image: several windows in tile mode, padded in pad mode
    detector = AnomalyDetector(model, output_size=item["size"])
    assert detector.plan is not None and detector.plan.count == item["image"].shape[0]
    with torch.no_grad():
        amap, score = detector(item["image"])
    np.testing.assert_allclose(amap[0, 0].numpy(), maps[item["path"]], rtol=1e-4, atol=1e-5)
    assert float(score[0]) == pytest.approx(scores[item["path"]], rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="windows of 64×64, got a batch of 7"):
        detector(torch.zeros(7, 3, 64, 64))
    with pytest.raises(ValueError, match="give the size of the images as output_size"):
        AnomalyDetector(model)

    program = export_program(model, 64, map_size=item["size"])
    with torch.no_grad():
        exported_map, exported_score = program.module()(item["image"])
    np.testing.assert_allclose(exported_map[0, 0].numpy(), maps[item["path"]], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="its input size cannot be 32×32"):
        export_program(model, 32, map_size=item["size"])
