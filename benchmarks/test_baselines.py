"""The benchmark baselines compute what the ops compute (a baseline that computes something else would
make every ratio against it meaningless)."""
import torch

import kernels_ss2d
from dhkd_kernels.ss2d.reference import ss2d_scan_reference


def test_sequential_scan_matches_the_reference():
    inputs = kernels_ss2d.make_inputs(3, 5, 8, 4, "cpu", seed=1)
    with torch.no_grad():
        got = kernels_ss2d.sequential_scan(*inputs)
        want = ss2d_scan_reference(*inputs, delta_softplus=True, out_float=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
