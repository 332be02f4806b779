"""DHKD model: shapes per preset and module, parameter counts, gradients, determinism, input errors."""
import pytest
import torch

from dhkd.models import DHKD, PRESETS, preset
from dhkd.models.fccm import FCCM
from dhkd.models.gnet import Gnet
from dhkd.models.lnet import Lnet
from dhkd.models.ss2d import HSTM, SS2D
from dhkd.models.student import StudentEncoder
from dhkd.models.teacher import PDN


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_counts():
    m = DHKD.from_preset("paper")
    assert n_params(m.teacher) == 8_026_624
    assert sum(p.numel() for p in m.student_parameters()) == 27_136_448
    assert n_params(m.encoder) == 4_546_432
    assert n_params(m.fccm) == 5_309_952
    assert n_params(m.lnet) == 5_904_768
    assert n_params(m.gnet) == 11_375_296
    assert n_params(HSTM(128, 16)) == 109_312
    assert n_params(SS2D(64, 16)) == 55_808


def test_paper_module_shapes_at_256():
    """Every paper-preset module's output shape at 256² (docs/method.md), on the meta device."""
    with torch.device("meta"):
        x = torch.empty(1, 3, 256, 256)
        assert PDN("medium", padding=True)(x).shape == (1, 384, 64, 64)
        assert PDN("small", padding=True)(x).shape == (1, 384, 64, 64)
        assert PDN("medium", padding=False)(x).shape == (1, 384, 56, 56)
        f_s = StudentEncoder()(x)
        assert f_s.shape == (1, 384, 64, 64)
        f_m = FCCM()(f_s)
        assert f_m.shape == (1, 384, 16, 16)
        assert Lnet()(f_m, (64, 64)).shape == (1, 384, 64, 64)
        g = Gnet()
        assert g.stage_sizes((64, 64)) == [(4, 4), (8, 8), (32, 32), (64, 64)]
        assert g.collapse(f_m).shape == (1, 64, 1, 1)
        assert g(f_m, (64, 64)).shape == (1, 384, 64, 64)


@pytest.mark.slow
def test_paper_preset_end_to_end_finite_map():
    torch.manual_seed(0)
    m = DHKD.from_preset("paper").eval()
    m.set_quantiles(0.0, 1.0, 0.0, 1.0)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 256, 256))
    assert out["anomaly_map"].shape == (1, 1, 256, 256)
    assert out["map_l"].shape == out["map_g"].shape == (1, 1, 64, 64)
    assert torch.isfinite(out["anomaly_map"]).all() and out["score"].shape == (1,)


@pytest.mark.parametrize("name,size", [("tiny", (64, 64)), ("tiny", (72, 96)),
                                       pytest.param("small", (256, 256), marks=pytest.mark.slow)])
def test_preset_shapes(name, size):
    torch.manual_seed(0)
    m = DHKD.from_preset(name).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        f = m.features(x)
        fh, fw = m.feature_size(size)
        for key in ("t_hat", "f_s", "f_l", "f_g"):
            assert f[key].shape == (2, m.config.channels, fh, fw), key
        m.set_quantiles(0.0, 1.0, 0.0, 2.0)
        out = m(x)
    assert out["anomaly_map"].shape == (2, 1, *size)
    assert torch.allclose(out["score"], out["anomaly_map"].flatten(1).amax(1))


def test_ss2d_block_non_square():
    torch.manual_seed(0)
    block = SS2D(16, d_state=4)
    y = block(torch.randn(2, 3, 5, 16))
    assert y.shape == (2, 3, 5, 16) and torch.isfinite(y).all()


def test_gradients_reach_every_student_parameter(tiny_model_factory):
    m = tiny_model_factory()
    out = m(torch.randn(1, 3, 128, 128))  # 32×32 features: every HSTM stage has L > 1, so A gets a gradient
    out["loss"].backward()
    missing = [n for n, p in m.named_parameters() if not n.startswith("teacher.")
               and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not missing, f"no gradient for {missing}"
    assert all(p.grad is None for p in m.teacher.parameters())
    a, b, c = m.config.loss_weights
    assert (a, b, c) == (1.0, 1.0, 2.0)
    assert torch.allclose(out["loss"], out["loss_l"] + out["loss_g"] + 2 * out["loss_c"])


def test_seeded_determinism(tiny_model_factory):
    def run():
        m = tiny_model_factory()
        x = torch.randn(1, 3, 64, 64)
        return m(x)["loss"].detach(), [p.detach().clone() for p in m.student_parameters()]

    (l1, p1), (l2, p2) = run(), run()
    assert torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


@pytest.mark.parametrize("switch", ["use_fccm", "use_scmm", "use_hstm", "use_gnet"])
def test_ablation_switches(tiny_model_factory, switch):
    full = tiny_model_factory()
    ablated = tiny_model_factory(**{switch: False})
    assert n_params(ablated) < n_params(full)
    out = ablated.train()(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out["loss"])


def test_without_gnet_is_lnet_only(tiny_model_factory):
    """The "Lnet only" ablation: the loss is α·(T̂−f_L)² alone, the map is norm(map_L) alone, and calibration,
    scoring and the detector work unchanged through the (map_L, zero map_G) pair."""
    from dhkd.models.calibration import fit_quantiles_on
    from dhkd.runtime import AnomalyDetector

    full, lnet_only = tiny_model_factory(), tiny_model_factory(use_gnet=False)
    assert lnet_only.gnet is None and lnet_only.map_mix == (1.0, 0.0)
    x = torch.randn(2, 3, 64, 64)
    out = lnet_only.train()(x)
    assert set(out) == {"loss", "loss_l"}
    full_out = full.train()(x)  # same seed: identical teacher, encoder, FCCM and Lnet
    torch.testing.assert_close(out["loss_l"], full_out["loss_l"])
    torch.testing.assert_close(out["loss"], lnet_only.config.loss_weights[0] * out["loss_l"])
    out["loss"].backward()
    assert all(p.grad is not None for p in lnet_only.encoder.parameters())

    lnet_only.eval()
    map_l, map_g = lnet_only.raw_maps(x)
    assert torch.count_nonzero(map_g) == 0
    q = fit_quantiles_on(lnet_only, [(x, ["a", "b"])])
    assert (q["qa_g"], q["qb_g"]) == (0.0, 0.0) and q["qb_l"] > q["qa_l"]
    w_l, w_g, c = lnet_only.map_weights()
    assert w_g == 0.0 and w_l == pytest.approx(0.1 / (q["qb_l"] - q["qa_l"]), rel=1e-5)
    amap, score = lnet_only.detect(x)
    expected = torch.nn.functional.interpolate(0.1 * (map_l - q["qa_l"]) / (q["qb_l"] - q["qa_l"]), size=(64, 64),
                                               mode="bilinear", align_corners=False)
    torch.testing.assert_close(amap, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(AnomalyDetector(lnet_only)(x)[1], score, rtol=1e-4, atol=1e-5)
    # without Gnet the input only has to survive the encoder (no 4× collapse to the Gnet kernel)
    assert lnet_only.min_input_size() < full.min_input_size()


def test_clear_input_errors(tiny_model_factory):
    m = tiny_model_factory().eval()
    with pytest.raises(ValueError, match="3 input channels"):
        m.features(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        m.features(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="too small"):
        m.features(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="image batch"):
        m.features(torch.randn(3, 64, 64))
    with pytest.raises(RuntimeError, match="quantiles are not fitted"):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="qa < qb"):
        m.set_quantiles(1.0, 0.5, 0.0, 1.0)
    paper = DHKD.from_preset("paper")
    assert paper.min_input_size() == 253
    with pytest.raises(ValueError, match="at least 253"):
        paper.check_input(torch.empty(1, 3, 128, 128))


def test_presets_and_config_errors():
    assert set(PRESETS) == {"paper", "small", "tiny"}
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="must be padded"):
        DHKD(preset("tiny", teacher_padding=False))
    cfg = preset("small")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_mixed_precision_autocast_forward_and_backward(tiny_model_factory):
    """Under autocast the fused SCMM/FCCM ops get bf16 activations with fp32 parameters."""
    m = tiny_model_factory()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(1, 3, 64, 64))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.lnet.scmm.aggr.weight.grad.dtype == torch.float32


@pytest.mark.slow
def test_fused_blocks_compile_fullgraph_in_a_fresh_process():
    """torch.compile(fullgraph=True) of the blocks built on custom ops, as the very first use of the kernels
    in a process (backend choice must not trace the extension import)."""
    import subprocess
    import sys

    code = """
import torch
from dhkd.models.fccm import FCCM
from dhkd.models.lnet import SCMM
from dhkd.models.ss2d import SS2D
torch.manual_seed(0)
for m, x in ((FCCM(8, 16), torch.randn(1, 8, 16, 16)), (SCMM(8), torch.randn(1, 8, 6, 6)),
             (SS2D(8), torch.randn(1, 5, 6, 8))):
    m.eval()
    with torch.no_grad():
        assert float((torch.compile(m, fullgraph=True)(x) - m(x)).abs().max()) < 1e-5, type(m).__name__
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
