"""Triton backend of selective_scan against the float64 reference, through the public op.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which is slow,
so the shapes are tiny; L = 21 and L = 35 span several 16-step chunks and so exercise the chunk carry of the
forward and the checkpoints and adjoint carry of the backward.
"""
from __future__ import annotations

import pytest
import torch

import dhkd_kernels
from dhkd_kernels.selective_scan.ops import selective_scan

from selective_scan_gpu_cases import Case, check_backend, make_inputs, opcheck_args, run_reference

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

FP32_CASES = [
    Case(),                                                                    # every input, 2 chunks
    Case(batch=2, dim=6, seqlen=35, dstate=3, groups=2, has_z=False),          # groups, 3 chunks, N padded
    Case(dim=5, seqlen=17, dstate=2, groups=0, B_var=False, has_D=False, has_bias=False, softplus=False),
    Case(batch=2, dim=4, seqlen=9, groups=2, C_var=False),                     # constant C beside variable B
    Case(dim=3, seqlen=1, B_var=False, C_var=False),                           # L = 1, both constant
]


@pytest.mark.parametrize("case", FP32_CASES, ids=str)
def test_fp32_matches_float64_reference(case):
    check_backend("triton", case, torch.float32, DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_io(dtype):
    check_backend("triton", Case(batch=2, dim=4, seqlen=20, groups=2), dtype, DEVICE)


def test_non_contiguous_inputs():
    """Transposed views (as VMamba's layouts produce) give the same result as contiguous copies."""
    case = Case(dim=4, seqlen=18, groups=0, has_z=False)
    u, delta, A, B, C, D, _, bias = make_inputs(case, torch.float32, DEVICE)
    views = [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (u, delta, B, C)]
    assert not views[0].is_contiguous()
    with dhkd_kernels.use_backend("triton"):
        out = selective_scan(*views[:2], A, *views[2:], D=D, delta_bias=bias, delta_softplus=True)
    ref, _, _ = run_reference([u, delta, A, B, C, D, None, bias], torch.zeros_like(u), True)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_opcheck():
    case = Case(dim=2, seqlen=5, dstate=2, groups=1)
    torch.library.opcheck(torch.ops.dhkd.selective_scan.default, opcheck_args(case, "triton", DEVICE))
