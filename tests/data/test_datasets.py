"""Dataset loaders on tiny generated folders in every layout, error cases, hold-out, synthetic generator."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dhkd.data import DatasetError, build_dataset, holdout_split
from dhkd.data import synthetic
from dhkd.data.common import IMAGENET_MEAN, IMAGENET_STD


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rgb(h=12, w=10, value=(200, 100, 50)):
    return np.broadcast_to(np.array(value, np.uint8), (h, w, 3)).copy()


def _mask(h=12, w=10, value=255):
    m = np.zeros((h, w), np.uint8)
    m[2:5, 3:6] = value
    return m


def make_mvtec(root: Path, category="widget", n_train=10, good_name="good", defect="crack",
               gt_suffix="_mask", ext=".png") -> Path:
    cat = root / category
    for i in range(n_train):
        _png(cat / "train" / good_name / f"{i:03d}{ext}", _rgb())
    for i in range(2):
        _png(cat / "test" / good_name / f"{i:03d}{ext}", _rgb())
        _png(cat / "test" / defect / f"{i:03d}{ext}", _rgb())
        _png(cat / "ground_truth" / defect / f"{i:03d}{gt_suffix}.png", _mask())
    return cat


def test_mvtec_ad_items_and_counts(tmp_path):
    make_mvtec(tmp_path)
    test = build_dataset("mvtec_ad", tmp_path, "widget", "test", image_size=8)
    assert len(test) == 4 and test.labels.tolist() == [1, 1, 0, 0]
    item = test[0]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    expected = (np.array([200, 100, 50]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(item["image"][:, 4, 4], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert item["mask"].shape == (1, 12, 10) and item["mask"].dtype == torch.uint8
    assert int(item["mask"].sum()) == 9 and item["mask"].max() == 1
    assert item["size"] == (12, 10) and item["defect"] == "crack" and item["label"] == 1
    good = test[3]
    assert good["label"] == 0 and good["defect"] == "good" and int(good["mask"].sum()) == 0
    train = build_dataset("mvtec_ad", tmp_path, "widget", "train", image_size=8, seed=0)
    val = build_dataset("mvtec_ad", tmp_path, "widget", "validation", image_size=8, seed=0)
    assert len(train) == 9 and len(val) == 1


def test_holdout_is_seeded_disjoint_and_complete(tmp_path):
    make_mvtec(tmp_path, n_train=30)
    split = {}
    for seed in (0, 0, 1):
        tr = build_dataset("mvtec_ad", tmp_path, "widget", "train", 8, seed)
        va = build_dataset("mvtec_ad", tmp_path, "widget", "validation", 8, seed)
        t, v = {s.path for s in tr.samples}, {s.path for s in va.samples}
        assert len(v) == 3 and not t & v and len(t | v) == 30
        split.setdefault(seed, []).append(v)
    assert split[0][0] == split[0][1] and split[0][0] != split[1][0]
    kept, held = holdout_split(list(range(209)), 0.1, seed=0)
    assert len(held) == 21 and len(kept) == 188 and sorted(kept + held) == list(range(209))
    with pytest.raises(DatasetError, match="at least 2"):
        holdout_split([1])


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    cat = make_mvtec(tmp_path)
    _png(cat / "test" / "good" / "000.png", np.full((12, 10), 128, np.uint8))
    rgba = np.concatenate([_rgb(), np.full((12, 10, 1), 7, np.uint8)], axis=2)
    _png(cat / "test" / "good" / "001.png", rgba)
    test = build_dataset("mvtec_ad", tmp_path, "widget", "test", 6)
    gray, colour = test[2]["image"], test[3]["image"]
    assert gray.shape == colour.shape == (3, 6, 6)
    raw = gray[:, 0, 0] * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)
    assert torch.allclose(raw, torch.full((3,), 128 / 255), atol=1e-5)
    assert torch.allclose(colour, test[0]["image"])  # alpha dropped, same colour as the RGB images


def test_error_cases_name_the_problem(tmp_path):
    cat = make_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="category 'nope'"):
        build_dataset("mvtec_ad", tmp_path, "nope", "test", 8)
    (cat / "test" / "crack" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = build_dataset("mvtec_ad", tmp_path, "widget", "test", 8)
    with pytest.raises(DatasetError, match="001.png"):
        ds[1]
    _png(cat / "ground_truth" / "crack" / "000_mask.png", _mask(5, 5))
    with pytest.raises(DatasetError, match=r"000_mask.png has size 5x5.*12x10"):
        ds[0]
    os.remove(cat / "ground_truth" / "crack" / "000_mask.png")
    with pytest.raises(DatasetError, match="no ground-truth mask for image '000'"):
        build_dataset("mvtec_ad", tmp_path, "widget", "test", 8)
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="at least 2"):
        build_dataset("mvtec_ad", tmp_path, "widget", "train", 8)
    (tmp_path / "empty" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="test split .* is empty"):
        build_dataset("mvtec_ad", tmp_path, "empty", "test", 8)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet", tmp_path, "widget", "test", 8)


def make_loco(root: Path, category="boxes") -> Path:
    cat = root / category
    config = [{"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True},
              {"defect_name": "extra", "pixel_value": 254, "saturation_threshold": 40, "relative_saturation": False}]
    cat.mkdir(parents=True)
    (cat / "defects_config.json").write_text(json.dumps(config))
    for split in ("train", "validation"):
        for i in range(3):
            _png(cat / split / "good" / f"{i:03d}.png", _rgb())
    _png(cat / "test" / "good" / "000.png", _rgb())
    _png(cat / "test" / "logical_anomalies" / "000.png", _rgb())
    _png(cat / "test" / "structural_anomalies" / "000.png", _rgb())
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", _mask(value=255))
    second = np.zeros((12, 10), np.uint8)
    second[8:, :] = 254
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", second)
    _png(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png", _mask(value=254))
    return cat


def test_mvtec_loco_channels_keep_pixel_values(tmp_path):
    cat = make_loco(tmp_path)
    test = build_dataset("mvtec_loco", tmp_path, "boxes", "test", 8)
    assert [s.defect for s in test.samples] == ["good", "logical_anomalies", "structural_anomalies"]
    assert test.provides == {"image_labels", "loco_channels"} and set(test.defects_config) == {254, 255}
    assert test.defects_config[255].saturation_area(9) == 4 and test.defects_config[254].saturation_area(9) == 9
    logical = test[1]["mask"].numpy()
    assert logical.shape == (2, 12, 10) and set(np.unique(logical[0])) == {0, 255}
    assert set(np.unique(logical[1])) == {0, 254}
    assert test[0]["mask"].shape == (1, 12, 10) and int(test[0]["mask"].sum()) == 0
    assert len(build_dataset("mvtec_loco", tmp_path, "boxes", "validation", 8)) == 3
    assert len(build_dataset("mvtec_loco", tmp_path, "boxes", "train", 8)) == 3
    two = np.zeros((12, 10), np.uint8)
    two[0, 0], two[1, 1] = 255, 254
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", two)
    with pytest.raises(DatasetError, match="exactly one positive pixel value"):
        test.mask(1)
    (cat / "defects_config.json").write_text('[{"defect_name": "x", "pixel_value": 9, '
                                             '"saturation_threshold": 2.5, "relative_saturation": true}]')
    with pytest.raises(DatasetError, match="saturation_threshold"):
        build_dataset("mvtec_loco", tmp_path, "boxes", "test", 8)


def test_visa_csv_and_plain_layouts(tmp_path):
    csv_root = tmp_path / "csv"
    rows = ["object,split,label,image,mask"]
    for i in range(5):
        _png(csv_root / "candle/Data/Images/Normal" / f"{i:04d}.JPG", _rgb())
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    _png(csv_root / "candle/Data/Images/Anomaly/0000.JPG", _rgb())
    _png(csv_root / "candle/Data/Masks/Anomaly/0000.png", _mask(value=1))
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/0000.JPG,candle/Data/Masks/Anomaly/0000.png")
    _png(csv_root / "candle/Data/Images/Normal/0100.JPG", _rgb())
    rows.append("candle,test,normal,candle/Data/Images/Normal/0100.JPG,")
    rows.append("pcb1,train,normal,pcb1/x.JPG,")  # another object: ignored
    (csv_root / "split_csv").mkdir()
    (csv_root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    test = build_dataset("visa", csv_root, "candle", "test", 8)
    assert test.labels.tolist() == [1, 0]
    assert test[0]["mask"].max() == 1 and int(test[0]["mask"].sum()) == 9  # binarised
    assert len(build_dataset("visa", csv_root, "candle", "train", 8)) == 4
    assert len(build_dataset("visa", csv_root, "candle", "validation", 8)) == 1
    with pytest.raises(DatasetError, match="'fryum' not found"):
        build_dataset("visa", csv_root, "fryum", "test", 8)
    plain = tmp_path / "plain"
    make_mvtec(plain, "candle", defect="bad", gt_suffix="")
    assert build_dataset("visa", plain, "candle", "test", 8).labels.tolist() == [1, 1, 0, 0]


def test_btad_layout(tmp_path):
    make_mvtec(tmp_path, "01", good_name="ok", defect="ko", gt_suffix="", ext=".bmp")
    test = build_dataset("btad", tmp_path, "01", "test", 8)
    assert [s.defect for s in test.samples] == ["ko", "ko", "ok", "ok"]
    assert test.labels.tolist() == [1, 1, 0, 0] and int(test[0]["mask"].sum()) == 9
    assert len(build_dataset("btad", tmp_path, "01", "train", 8)) == 9


def test_folder_layout_with_and_without_masks(tmp_path):
    base = tmp_path / "parts"
    for i in range(10):
        _png(base / "normal" / f"n{i}.png", _rgb())
    _png(base / "normal_test" / "g0.png", _rgb())
    _png(base / "abnormal" / "a0.png", _rgb())
    test = build_dataset("folder", tmp_path, "parts", "test", 8)
    assert test.labels.tolist() == [0, 1] and not test.has_masks and test[1]["defect"] == "abnormal"
    _png(base / "mask" / "a0_mask.png", _mask())
    test = build_dataset("folder", tmp_path, "parts", "test", 8)
    assert test.has_masks and int(test[1]["mask"].sum()) == 9
    assert len(build_dataset("folder", base, "", "train", 8)) == 9
    with pytest.raises(DatasetError, match="normal-image folder"):
        build_dataset("folder", tmp_path, "parts", "train", 8, normal_dir="missing")


def test_synthetic_generator_is_deterministic(tmp_path):
    params = dict(size=48, n_train=4, n_test_good=2, n_test_defect=4)
    synthetic.generate(tmp_path / "a", seed=5, **params)
    synthetic.generate(tmp_path / "b", seed=5, **params)
    synthetic.generate(tmp_path / "c", seed=6, **params)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 4 + 2 + 4 + 4
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    test = build_dataset("synthetic", tmp_path / "gen", "synthetic", "test", 16, **params)
    assert len(test) == 6 and test.labels.sum() == 4
    assert sorted({s.defect for s in test.samples}) == ["blob", "color_spot", "good", "missing_part", "scratch"]
    assert all(test.mask(i).sum() > 0 for i in range(len(test)) if test.samples[i].label)
    again = build_dataset("synthetic", tmp_path / "gen", "synthetic", "test", 16, **params)  # reuses files
    assert [s.path for s in again.samples] == [s.path for s in test.samples]
    with pytest.raises(DatasetError, match="choose another root"):
        build_dataset("synthetic", tmp_path / "gen", "synthetic", "test", 16, size=64)


def _real_data_root() -> Path:
    env = os.environ.get("DHKD_DATA_ROOT")
    if env:
        return Path(env) / "mvtec_ad" if (Path(env) / "mvtec_ad").is_dir() else Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mvtec_ad"


REAL = _real_data_root()


@pytest.mark.skipif(not (REAL / "bottle").is_dir(), reason=f"MVTec AD bottle not found under {REAL}")
def test_real_mvtec_ad_bottle_splits_and_mask_sizes():
    train = build_dataset("mvtec_ad", REAL, "bottle", "train", 64, seed=0)
    val = build_dataset("mvtec_ad", REAL, "bottle", "validation", 64, seed=0)
    test = build_dataset("mvtec_ad", REAL, "bottle", "test", 64)
    assert len(val) == 21 and len(train) == 209 - 21
    assert not {s.path for s in train.samples} & {s.path for s in val.samples}
    assert int((test.labels == 0).sum()) == 20 and int(test.labels.sum()) == 63
    assert {s.defect for s in test.samples} == {"good", "broken_large", "broken_small", "contamination"}
    for i, s in enumerate(test.samples):
        if s.label:
            m = test.mask(i)  # checks the mask size against the image header
            assert m.shape == (1, 900, 900) and m.any()
    item = test[0]
    assert item["image"].shape == (3, 64, 64) and item["size"] == (900, 900)
