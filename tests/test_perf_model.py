"""The offline GPU performance model (benchmarks/perf_model.py) runs without a GPU: ptxas figures for every CUDA
kernel at sm_90, no register spills in any forward kernel, and the SS2D CUDA forward predicted within its
15 µs target at DHKD's largest map (64x64, D=128, N=16, batch 1) on an H100 and an H200."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("perf_model", ROOT / "benchmarks" / "perf_model.py")
perf_model = importlib.util.module_from_spec(_spec)
sys.modules["perf_model"] = perf_model  # dataclasses resolve the module by name
_spec.loader.exec_module(perf_model)

pytestmark = pytest.mark.skipif(perf_model.nvcc_path() is None, reason="no nvcc: the model needs ptxas")


@pytest.fixture(scope="module")
def model():
    try:
        import triton  # noqa: F401
        with_triton = True
    except ImportError:
        with_triton = False
    return perf_model.build(with_triton=with_triton)


def test_no_forward_kernel_spills(model):
    forward = [k for k in model["kernels"] if k["forward"]]
    assert {"ss2d_fwd_kernel", "two_scale_fwd_kernel", "pool_relu_fwd_kernel"} <= {k["kernel"] for k in forward}
    assert perf_model.forward_spills(model) == []


def test_every_kernel_has_ptxas_figures(model):
    for k in model["kernels"]:
        assert k["registers"] > 0, k
        if k["source"].endswith(".cu"):
            assert k["registers"] <= 255, k


@pytest.mark.parametrize("gpu", ["H100", "H200"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_ss2d_forward_predicted_within_target(model, gpu, dtype):
    row = perf_model.find(model, gpu, "SS2D forward, CUDA", f"b=1 64x64 D=128 N=16 {dtype}")
    fwd = row["launches"][0]
    assert fwd["ctas"] >= 4 * 132, "the forward must fill the GPU at batch 1"
    assert fwd["ctas_per_sm"] >= 2
    assert row["predicted_us"] <= 15.0, row


def test_model_is_consistent(model):
    """More work never predicts less time; the H200's faster memory never predicts more."""
    small = perf_model.find(model, "H100", "SS2D forward, CUDA", "b=1 32x32 D=128 N=16 fp32")
    large = perf_model.find(model, "H100", "SS2D forward, CUDA", "b=1 64x64 D=128 N=16 fp32")
    batch = perf_model.find(model, "H100", "SS2D forward, CUDA", "b=16 64x64 D=128 N=16 fp32")
    assert small["predicted_us"] < large["predicted_us"] < batch["predicted_us"]
    for row in model["ops"]:
        if row["gpu"] == "H100":
            other = perf_model.find(model, "H200", row["op"], row["shape"])
            assert other["predicted_us"] <= row["predicted_us"] + 1e-9, row["op"]


def test_markdown_report(model):
    text = perf_model.markdown(model, "python benchmarks/perf_model.py")
    assert "## Peak rates used" in text and "SS2D forward, CUDA" in text and "target ≤ 15 µs" in text


def test_occupancy_limits():
    gpu = perf_model.PEAKS["H100"]
    assert perf_model.occupancy(gpu, 256, 128, 36 * 1024) == 2  # registers: 2 x 256 x 128 = 64K
    assert perf_model.occupancy(gpu, 256, 32, 0) == 8  # threads: 2048 / 256
    assert perf_model.occupancy(gpu, 256, 64, 120 * 1024) == 1  # shared memory
