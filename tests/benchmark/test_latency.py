"""Latency benchmark: runs end to end on the tiny preset in quick mode and writes well-formed JSON;
the measurement helpers on known inputs. No timing thresholds."""
import json
import math

import pytest
import torch

from dhkd.benchmark.config import SCHEMA
from dhkd.benchmark.efficientad import EfficientADM, ae_decoder_sizes
from dhkd.benchmark.measure import agreement, summarize, synthetic_images, time_interleaved
from dhkd.benchmark.report import format_report, ratios
from dhkd.cli import main
from dhkd.models.calibration import fit_quantiles_on
from dhkd.runtime import MODES, Runner


def test_benchmark_tiny_quick_writes_json(tmp_path, capsys):
    code = main(["benchmark", "--presets", "tiny", "--quick", "--modes", "eager", "channels_last",
                 "--peers", "dhkd-reference", "--warmup", "1", "--repeats", "3", "--throughput-batch", "2",
                 "--throughput-repeats", "1", "--agreement-images", "3", "--shared-machine", "--threads", "1",
                 "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "dhkd[channels_last]" in out and "kernels/reference" in out
    files = list(tmp_path.glob("latency_*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    assert res["schema"] == SCHEMA and res["environment"]["shared_machine"] is True
    p = res["presets"]["tiny"]
    assert set(p["latency"]) == {"dhkd[eager]", "dhkd[channels_last]", "dhkd-reference[eager]"}
    for v in p["latency"].values():
        assert v["n"] == 3 and 0 < v["min_ms"] <= v["median_ms"] <= v["p90_ms"]
        assert math.isfinite(v["mean_ms"])
    assert p["backends"]["dhkd-reference"] == {op: "reference" for op in p["backends"]["dhkd"]}
    # channels_last and the reference path compute the same maps as fp32 eager
    for name in ("dhkd[channels_last]", "dhkd-reference[eager]"):
        a = p["agreement"][name]
        assert a["images"] == 3 and a["max_abs_diff"] < 1e-3 and a["pearson_r"] > 0.999
    assert p["ss2d"]["dhkd[eager]"]["calls"] == 4 and p["ss2d"]["dhkd[eager]"]["scan_op_ms"] is not None
    assert p["ss2d"]["dhkd-reference[eager]"]["scan_op_ms"] is None
    for name in p["latency"]:  # a tiny model is still mostly convolutions; the shares are fractions
        c = p["conv"][name]
        assert 0 < c["conv_ms"] <= c["total_ms"] and 0 < c["conv_share"] <= 1
    assert "convolutions in one forward, dhkd[eager]" in out
    assert p["throughput"]["dhkd[eager]"]["batch"] == 2 and p["throughput"]["dhkd[eager]"]["images_per_s"] > 0
    assert set(p["ratios"]["kernels_over_reference"]) == {"eager"}
    # the GPU report adds the paper's 7.6 ms line
    res["environment"]["gpu"], res["presets"] = "some GPU", {"paper": p}
    assert "7.6 ms" in format_report(res)


@pytest.mark.gpu
def test_benchmark_tiny_gpu_modes(tmp_path):
    code = main(["benchmark", "--presets", "tiny", "--device", "cuda", "--modes", "eager", "fp16", "cudagraph",
                 "fp16-cudagraph", "--peers", "dhkd-reference", "--warmup", "2", "--repeats", "3",
                 "--throughput-batch", "2", "--throughput-repeats", "1", "--agreement-images", "3",
                 "--output-dir", str(tmp_path)])
    assert code == 0
    p = json.loads(next(tmp_path.glob("latency_*.json")).read_text())["presets"]["tiny"]
    assert p["agreement"]["dhkd[cudagraph]"]["max_abs_diff"] < 1e-4
    assert p["agreement"]["dhkd[fp16-cudagraph]"]["pearson_r"] > 0.9
    assert p["backends"]["dhkd"]["ss2d_scan"] in ("cuda", "triton")


def test_time_interleaved_rotates_the_order():
    calls = []
    runners = {n: (lambda x, n=n: calls.append(n)) for n in "ABC"}
    times = time_interleaved(runners, lambda: None, warmup=1, repeats=3)
    assert calls == list("ABC" "BCA" "CAB" "ABC")
    assert all(len(t) == 3 for t in times.values())


def test_summarize_known_values():
    s = summarize([0.001 * i for i in range(1, 11)])
    assert s["median_ms"] == pytest.approx(5.5) and s["p90_ms"] == pytest.approx(9.0)
    assert s["mean_ms"] == pytest.approx(5.5) and s["min_ms"] == pytest.approx(1.0) and s["n"] == 10


def test_agreement_identical_and_reversed():
    maps = torch.rand(4, 1, 8, 8)
    scores = torch.tensor([0.1, 0.4, 0.2, 0.9])
    same = agreement(maps, scores, maps.clone(), scores.clone())
    assert same["max_abs_diff"] == 0 and same["pearson_r"] == pytest.approx(1.0)
    assert same["score_spearman"] == pytest.approx(1.0) and same["same_ranking"]
    rev = agreement(-maps, -scores, maps, scores)
    assert rev["pearson_r"] == pytest.approx(-1.0) and rev["score_spearman"] == pytest.approx(-1.0)
    assert not rev["same_ranking"]


def test_ratios_per_mode_and_best():
    lat = {"dhkd[eager]": {"model": "dhkd", "mode": "eager", "median_ms": 12.0},
           "dhkd[bf16]": {"model": "dhkd", "mode": "bf16", "median_ms": 6.0},
           "efficientad-m[eager]": {"model": "efficientad-m", "mode": "eager", "median_ms": 10.0},
           "efficientad-m[bf16]": {"model": "efficientad-m", "mode": "bf16", "median_ms": 8.0},
           "dhkd-reference[eager]": {"model": "dhkd-reference", "mode": "eager", "median_ms": 24.0}}
    r = ratios(lat, ["eager", "bf16"])
    assert r["dhkd_over_efficientad_m"] == {"eager": pytest.approx(1.2), "bf16": pytest.approx(0.75)}
    assert r["kernels_over_reference"] == {"eager": pytest.approx(0.5)}
    assert r["best_over_best"]["dhkd_mode"] == "bf16" and r["best_over_best"]["ratio"] == pytest.approx(0.75)
    assert "dhkd_convolutions_over_efficientad_m_best" not in r
    conv = {"dhkd[eager]": {"conv_ms": 10.0}, "dhkd[bf16]": {"conv_ms": 4.0},
            "efficientad-m[bf16]": {"conv_ms": 1.0}}  # EfficientAD-M's own convolutions do not count
    c = ratios(lat, ["eager", "bf16"], conv)["dhkd_convolutions_over_efficientad_m_best"]
    assert c["variant"] == "dhkd[bf16]" and c["ratio"] == pytest.approx(0.5)


def test_efficientad_m_shapes_and_parameters():
    assert ae_decoder_sizes(256) == [3, 8, 15, 32, 63, 127, 56]
    torch.manual_seed(0)
    m = EfficientADM(256)
    counts = {n: sum(p.numel() for p in c.parameters()) for n, c in m.named_children()}
    assert counts["teacher"] == 8_026_624 and counts["student"] == 11_615_488 and counts["autoencoder"] == 1_096_320
    x = synthetic_images(1, 256)
    q = fit_quantiles_on(m, [(x, ["synthetic"])])  # the same calibration as DHKD's
    assert q["qa_l"] < q["qb_l"] and m.weights[0] == pytest.approx(0.05 / (q["qb_l"] - q["qa_l"]))
    with torch.no_grad():
        amap, score = m(x)
        st, ae = m.raw_maps(x)
    assert st.shape == ae.shape == (1, 1, 56, 56)  # unpadded PDN-M at 256²
    assert amap.shape == (1, 1, 256, 256) and torch.allclose(score, amap.flatten(1).amax(1))
    with pytest.raises(ValueError, match="at least 256"):
        EfficientADM(128)


def test_unsupported_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA graphs need a GPU"):
        Runner(torch.nn.Identity(), MODES["cudagraph"], torch.device("cpu"))
