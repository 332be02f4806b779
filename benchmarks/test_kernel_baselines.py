"""The benchmark baselines compute what the ops compute (a baseline that computes something else would
make every ratio against it meaningless)."""
import os

import pytest
import torch

if not torch.cuda.is_available():  # before any @triton.jit runs: the Triton baseline runs interpreted here
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kernels_ss2d  # noqa: E402
from dhkd_kernels.ss2d.reference import ss2d_scan_reference  # noqa: E402


def test_sequential_scan_matches_the_reference():
    inputs = kernels_ss2d.make_inputs(3, 5, 8, 4, "cpu", seed=1)
    with torch.no_grad():
        got = kernels_ss2d.sequential_scan(*inputs)
        want = ss2d_scan_reference(*inputs, delta_softplus=True, out_float=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_separate_ops_baseline_matches_the_reference():
    pytest.importorskip("triton")
    import ss2d_separate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = [t.to(device) for t in kernels_ss2d.make_inputs(3, 6, 5, 4, device="cpu", seed=2)]  # L = 18: 2 chunks
    inputs[0] = torch.cat([inputs[0], inputs[0] + 1])  # batch 2
    inputs[1], inputs[3], inputs[4] = (torch.cat([t, t.flip(1)]) for t in (inputs[1], inputs[3], inputs[4]))
    with torch.no_grad():
        got = ss2d_separate.separate_ops(*ss2d_separate.prepare(*inputs))
        want = ss2d_scan_reference(*inputs, delta_softplus=True, out_float=True)
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-5)
