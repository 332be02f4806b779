"""Triton backend of selective_scan against the float64 reference, through the public op.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which is slow,
so the shapes are tiny; L = 20 and L = 35 span several 16-step chunks and so exercise the chunk carry of the
forward and the checkpoints and adjoint carry of the backward.
"""
from __future__ import annotations

import pytest
import torch

from hypothesis import given, settings

import dhkd_kernels
from kernel_checks import assert_compiles_outside_interpreter
from selective_scan_cases import HYPOTHESIS, TINY_CASES, check_backend, make_inputs, require, run_reference, \
    scan_cases

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _triton_runs_here():
    require("triton", DEVICE)


CASES = TINY_CASES + [  # (batch, D, L, N, groups), options
    ((2, 6, 35, 3, 2), dict(has_z=False)),  # 3 chunks, N padded to the tile
    ((1, 5, 17, 2, 1), dict(var_B=False, three_d=True, has_d=False, has_bias=False, softplus=False)),
    ((2, 4, 21, 4, 2), dict(var_C=False)),  # constant C beside grouped variable B, partial last chunk
]


@pytest.mark.parametrize("shape,opts", CASES, ids=[f"{c[0]}-{'-'.join(sorted(c[1]))}" for c in CASES])
def test_fp32_matches_float64_reference(shape, opts):
    check_backend("triton", DEVICE, shape, **opts)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_io(dtype):
    check_backend("triton", DEVICE, (2, 4, 20, 4, 2), dtype=dtype)


@pytest.mark.skipif(DEVICE != "cuda", reason="compiled Triton on a GPU (the interpreter is too slow for these)")
@settings(max_examples=40, **HYPOTHESIS)
@given(kw=scan_cases(dtypes=(torch.float32, torch.float16, torch.bfloat16)))
def test_fuzzed_shapes(kw):
    check_backend("triton", DEVICE, **kw)


def test_non_contiguous_inputs():
    """Transposed views (as VMamba's layouts produce) give the result of the contiguous inputs."""
    u, delta, A, B, C, D, _, bias = make_inputs(1, 4, 18, 4, 1, has_z=False, device=DEVICE)
    views = [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (u, delta, B, C)]
    assert not any(t.is_contiguous() for t in views)
    with dhkd_kernels.use_backend("triton"):
        out = dhkd_kernels.selective_scan(*views[:2], A, *views[2:], D=D, delta_bias=bias, delta_softplus=True)
    ref, _, _ = run_reference([u, delta, A, B, C, D, None, bias], torch.zeros_like(u), True)
    torch.testing.assert_close(out.double().cpu(), ref, atol=2e-5, rtol=2e-5)


def test_opcheck():
    inputs = make_inputs(1, 2, 5, 2, 1, seed=3, device=DEVICE)
    args = [None if t is None else t.requires_grad_() for t in inputs] + [True, "triton"]
    torch.library.opcheck(torch.ops.dhkd.selective_scan.default, args)


_COMPILE_FOR_SM90 = r"""
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dhkd_kernels.selective_scan import triton as tri

# The tiles of the Mamba-LM shape (D = 1536, L = 2048, N = 16, one group).
geo = tri._geometry(torch.empty(1, 1536, 2048), torch.empty(1536, 16), torch.empty(1, 1, 16, 2048),
                    torch.empty(1, 1, 16, 2048))
blocks = dict(BLOCK_T=geo["block_t"], BLOCK_D=geo["block_d"], BLOCK_N=geo["block_n"])
io = {"u_ptr", "delta_ptr", "b_ptr", "c_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
all_on = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, B_VAR=True, C_VAR=True)
variants = [(tri._fwd_kernel, "fp32", dict(all_on, STATES_ONLY=False)),
            (tri._fwd_kernel, "bf16", dict(all_on, STATES_ONLY=True, B_VAR=False)),
            (tri._bwd_kernel, "fp32", all_on),
            (tri._bwd_kernel, "bf16", dict(all_on, B_VAR=False, C_VAR=False, HAS_Z=False))]
for fn, io_type, flags in variants:
    const = {**flags, **blocks}
    sig = {n: "constexpr" if n in const else (f"*{io_type}" if n in io else "*fp32") if n.endswith("_ptr") else "i32"
           for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=4))
    assert "ex2.approx" in kernel.asm["ptx"] and kernel.asm["cubin"], fn.__name__
print("compiled")
"""


def test_kernels_compile_for_sm90(tmp_path):
    """The kernels build for sm_90 (ptxas included), which the interpreter alone would never check."""
    assert_compiles_outside_interpreter(_COMPILE_FOR_SM90, tmp_path)
