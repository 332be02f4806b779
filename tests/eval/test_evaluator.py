"""The evaluator end to end with a fake model, TIFF export, evaluate_maps round trip and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dhkd.cli import main
from dhkd.data import build_dataset
from dhkd.eval.evaluator import evaluate_maps, evaluate_model, fit_quantiles
from dhkd.eval.visualize import jet, overlay

sys.path.insert(0, str(Path(__file__).parent))
from fake_model import RedChannelModel  # noqa: E402

SYN = dict(size=48, n_train=10, n_test_good=3, n_test_defect=8)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    build_dataset("synthetic", root, "synthetic", "test", 16, **SYN)
    return root


def test_quantiles_come_from_good_validation_images_only(syn_root):
    model = RedChannelModel(16)
    val = build_dataset("synthetic", syn_root, "synthetic", "validation", 16, seed=0, **SYN)
    q = fit_quantiles(model, val)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    map_l, map_g = model.raw_maps(images)
    assert q["num_images"] == len(val) == 1
    assert q["qa_l"] == pytest.approx(np.quantile(map_l.numpy().astype(np.float64), 0.9))
    assert q["qb_g"] == pytest.approx(np.quantile(map_g.numpy().astype(np.float64), 0.995))
    assert model.quantiles == (q["qa_l"], q["qb_l"], q["qa_g"], q["qb_g"])
    sub = fit_quantiles(RedChannelModel(16), val, max_values=10, seed=1)  # seeded subsampling path
    assert sub == fit_quantiles(RedChannelModel(16), val, max_values=10, seed=1)


def test_evaluate_model_end_to_end_and_maps_round_trip(syn_root, tmp_path):
    out = tmp_path / "run"
    res = evaluate_model(RedChannelModel(16), "synthetic", syn_root, "synthetic", out, export_maps=True,
                         overlays=True, batch_size=4)
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == res["metrics"]
    assert set(saved["metrics"]) == {"image_auroc", "pixel_auroc", "au_pro"}
    assert set(saved["metric_definitions"]) == {"image_auroc", "pixel_auroc", "au_pro"}
    assert 0.0 <= res["metrics"]["au_pro"]["0.3"] <= 1.0 and res["map"]["clamped"] is False
    assert "AU-PRO@0.3" in (out / "results.md").read_text()
    tiffs = sorted((out / "anomaly_maps" / "synthetic" / "test").rglob("*.tiff"))
    assert len(tiffs) == 11
    m = tifffile.imread(tiffs[0])
    assert m.dtype == np.float32 and m.shape == (48, 48)  # original resolution, not the 16 px input
    assert len(list((out / "overlays").rglob("*.png"))) == 11
    again = evaluate_maps(out, "synthetic", syn_root, "synthetic", tmp_path / "again", size=48)
    assert again["metrics"] == res["metrics"]  # float32 maps are stored exactly
    assert [i["score"] for i in again["images"]] == pytest.approx([i["score"] for i in res["images"]])


def test_evaluate_maps_with_ground_truth_as_map_is_perfect(syn_root, tmp_path):
    test = build_dataset("synthetic", syn_root, "synthetic", "test", 16, **SYN)
    maps = tmp_path / "maps"
    for i, s in enumerate(test.samples):
        gt = test.mask(i)[0].astype(np.float32)
        _write(maps / "synthetic" / "test" / s.defect / f"{s.path.stem}.tiff", gt)
    res = evaluate_maps(maps, "synthetic", syn_root, "synthetic", tmp_path / "out", **SYN)
    assert res["metrics"]["image_auroc"] == 1.0 and res["metrics"]["pixel_auroc"] == 1.0
    assert res["metrics"]["au_pro"]["0.3"] == pytest.approx(1.0)
    bad = next((maps / "synthetic" / "test" / "blob").glob("*.tiff"))
    _write(bad, np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match=r"has shape \(10, 10\) but its image is \(48, 48\)"):
        evaluate_maps(maps, "synthetic", syn_root, "synthetic", tmp_path / "out", **SYN)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="anomaly map missing"):
        evaluate_maps(maps, "synthetic", syn_root, "synthetic", tmp_path / "out", **SYN)


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)


def _loco(root: Path) -> None:
    cat = root / "boxes"
    cat.mkdir(parents=True)
    (cat / "defects_config.json").write_text(json.dumps([
        {"defect_name": "a", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
        {"defect_name": "b", "pixel_value": 200, "saturation_threshold": 4, "relative_saturation": False}]))
    rgb = np.full((20, 16, 3), 90, np.uint8)
    for d, n in (("good", 3), ("logical_anomalies", 2), ("structural_anomalies", 2)):
        for i in range(n):
            p = cat / "test" / d / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(p)
            if d != "good":
                for k, value in enumerate((255, 200)):
                    m = np.zeros((20, 16), np.uint8)
                    m[2 + 8 * k:6 + 8 * k, 3 + i:9 + i] = value
                    g = cat / "ground_truth" / d / f"{i:03d}" / f"{k:03d}.png"
                    g.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).save(g)


def test_loco_evaluate_maps_and_cli(tmp_path, capsys):
    _loco(tmp_path / "data")
    test = build_dataset("mvtec_loco", tmp_path / "data", "boxes", "test", 8)
    rng = np.random.default_rng(0)
    maps = tmp_path / "maps"
    for i, s in enumerate(test.samples):
        m = rng.random((20, 16)).astype(np.float32)
        m += 0.8 * test.mask(i).any(axis=0)
        _write(maps / "boxes" / "test" / s.defect / f"{s.path.stem}.tiff", m)
    code = main(["evaluate", "--maps", str(maps), "--dataset", "mvtec_loco", "--root", str(tmp_path / "data"),
                 "--category", "boxes", "--output", str(tmp_path / "out")])
    assert code == 0 and "AU-sPRO@0.05" in capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    metrics = res["metrics"]
    assert set(metrics["au_spro"]) == {"logical_anomalies", "structural_anomalies", "mean"}
    assert list(metrics["au_spro"]["mean"]) == ["0.01", "0.05", "0.1", "0.3", "1.0"]
    assert metrics["image_auroc"]["mean"] == 1.0 and metrics["image_auroc_loco_tie_rule"]["mean"] == 1.0
    assert metrics["au_spro"]["mean"]["1.0"] > 0.9
    assert {"au_spro", "image_auroc", "image_auroc_loco_tie_rule"} <= set(res["metric_definitions"])
    assert res["details"]["curve"]["fpr"][0] == 0.0 and res["details"]["curve"]["fpr"][-1] == 1.0


def test_overlay_colours_and_contour():
    assert jet(np.array([0.0]))[0].tolist() == [0, 0, 128]
    assert jet(np.array([1.0]))[0].tolist() == [128, 0, 0]
    img = np.zeros((10, 10, 3), np.uint8)
    amap = np.zeros((10, 10), np.float32)
    amap[5:, :] = 1.0
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    out = overlay(img, amap, 0.0, 1.0, mask)
    assert out[0, 0].tolist() == [0, 0, 64] and out[9, 0].tolist() == [64, 0, 0]
    assert out[2, 4].tolist() == [255, 255, 255] and out[4, 4].tolist() != [255, 255, 255]
