"""selective_scan: the reference against a naive loop, the C++ CPU backend against the float64 reference
(forward, backward, last state; hypothesis shapes, all dtypes and options, non-contiguous inputs, opcheck,
torch.compile), and input errors. The checks live in ``selective_scan_cases`` for the GPU backends' tests."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import event, given, settings

import dhkd_kernels
from dhkd_kernels import _ext, registry
from dhkd_kernels.selective_scan import reference
from dhkd_kernels.selective_scan.ops import check_selective_scan_inputs

from kernel_checks import gradcheck_fp32
from selective_scan_cases import (HYPOTHESIS, NAMES, OP, TINY_CASES, TOL, assert_near, check_backend, make_inputs,
                                  run_backend, run_reference, scan_cases)

needs_cpu = pytest.mark.skipif(not registry.is_available(OP, "cpu", "cpu"),
                               reason=f"C++ selective-scan kernels not built ({_ext.error('_cpu')})")


# ---------------------------------------------------------------------------------------------------
# The reference against an independent scalar loop (float64)
# ---------------------------------------------------------------------------------------------------

def naive_scan(u, delta, A, B, C, D, z, bias, softplus):
    """Scalar loops over batch, channel, step; B/C indexed per channel from any of their layouts."""
    bsz, Dch, L = u.shape
    out = torch.zeros(bsz, Dch, L, dtype=torch.float64)
    last = torch.zeros(bsz, Dch, A.shape[1], dtype=torch.float64)

    def row(t, b, d, step):  # the N values channel d of batch b sees at `step`
        if t.dim() == 2:
            return t[d].double()
        t = t.unsqueeze(1) if t.dim() == 3 else t
        return t[b, d // (Dch // t.shape[1]), :, step].double()

    for b in range(bsz):
        for d in range(Dch):
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            for step in range(L):
                x = delta[b, d, step].item() + (bias[d].item() if bias is not None else 0.0)
                dt = (x if x > 20 else math.log1p(math.exp(x))) if softplus else x
                h = torch.exp(dt * A[d].double()) * h + dt * u[b, d, step].item() * row(B, b, d, step)
                y = (row(C, b, d, step) * h).sum().item() + (D[d].item() * u[b, d, step].item() if D is not None else 0)
                if z is not None:
                    zz = z[b, d, step].item()
                    y *= zz / (1 + math.exp(-zz))
                out[b, d, step] = y
            last[b, d] = h
    return out, last


@pytest.mark.parametrize("shape,opts", TINY_CASES, ids=[str(c[0]) for c in TINY_CASES])
def test_reference_matches_naive_loop(shape, opts):
    inputs = [None if t is None else t.double() for t in make_inputs(*shape, seed=3, **opts)]
    softplus = opts.get("softplus", True)
    want, want_last = naive_scan(*inputs, softplus)
    got, got_last = reference.selective_scan_reference(*inputs, delta_softplus=softplus)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_last, want_last, rtol=1e-10, atol=1e-10)


def test_reference_gradcheck():
    inputs = [t.double().requires_grad_() for t in make_inputs(1, 4, 5, 2, 2, seed=4)]
    assert torch.autograd.gradcheck(lambda *a: reference.selective_scan_reference(*a, delta_softplus=True)[0],
                                    tuple(inputs))


def test_float64_runs_the_reference_and_return_conventions():
    inputs = [t.double() for t in make_inputs(2, 4, 6, 3, seed=5)]
    out = dhkd_kernels.selective_scan(*inputs, delta_softplus=True)
    out2, last = dhkd_kernels.selective_scan(*inputs, delta_softplus=True, return_last_state=True)
    want, want_last = reference.selective_scan_reference(*inputs, delta_softplus=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(out2, want, rtol=0, atol=0)
    torch.testing.assert_close(last, want_last, rtol=0, atol=0)


def test_delta_softplus_defaults_to_false():
    inputs = make_inputs(1, 3, 4, 2, softplus=False, seed=6)
    with dhkd_kernels.use_backend("reference"):
        default = dhkd_kernels.selective_scan(*inputs)
        explicit = dhkd_kernels.selective_scan(*inputs, delta_softplus=False)
        other = dhkd_kernels.selective_scan(*inputs, delta_softplus=True)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert not torch.allclose(default, other)


# ---------------------------------------------------------------------------------------------------
# C++ CPU backend against the reference
# ---------------------------------------------------------------------------------------------------

@needs_cpu
def test_cpu_is_the_default_for_cpu_tensors():
    assert registry.choose(OP, torch.device("cpu")) == "cpu"


@needs_cpu
@pytest.mark.parametrize("shape,opts", TINY_CASES, ids=[str(c[0]) for c in TINY_CASES])
def test_tiny_fp32(shape, opts):
    check_backend("cpu", "cpu", shape, **opts)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("var_bc", [True, False], ids=["variable_BC", "constant_BC"])
def test_half(dtype, var_bc):
    check_backend("cpu", "cpu", (2, 40, 37, 16, 2), dtype, var_B=var_bc, var_C=var_bc)


@needs_cpu
@settings(max_examples=25, **HYPOTHESIS)
@given(case=scan_cases())
def test_random_shapes_fp32(case):
    long = case["shape"][2] >= 100
    event("long scan (L >= 100)" if long else "L < 100")
    check_backend("cpu", "cpu", **case, tol=TOL[torch.float32] * (5 if long else 1))


@needs_cpu
@settings(max_examples=10, **HYPOTHESIS)
@given(case=scan_cases(dtypes=(torch.float16, torch.bfloat16)))
def test_random_shapes_half(case):
    check_backend("cpu", "cpu", **case)


@needs_cpu
def test_mamba_lm_channel_count_forward():
    """Many channel blocks, full 16-step transposes and several chunks: D = 200, L = 300, N = 16 (forward and
    last state in fp32 against float64)."""
    inputs = make_inputs(1, 200, 300, 16, seed=7)
    with dhkd_kernels.use_backend("cpu"):
        out, last = dhkd_kernels.selective_scan(*inputs, delta_softplus=True, return_last_state=True)
    want, want_last = reference.selective_scan_reference(*[t.double() for t in inputs], delta_softplus=True)
    assert_near("out", out, want, TOL[torch.float32])
    assert_near("last_state", last, want_last, TOL[torch.float32])


@needs_cpu
def test_extreme_delta_matches_reference():
    """delta + bias far above the softplus threshold (identity) and far below (exp underflow)."""
    inputs = make_inputs(1, 20, 9, 4, seed=8)
    inputs[1] = inputs[1] + torch.tensor([0.0, 30.0, -40.0, 19.0] * 5).view(1, 20, 1)
    inputs[2] = inputs[2] * 0.005  # keep exp(dt·A) from underflowing so every gradient path stays live
    dout = torch.randn(1, 20, 9, generator=torch.Generator().manual_seed(9))
    out, last, grads = run_backend("cpu", inputs, dout, True)
    out_ref, last_ref, grads_ref = run_reference(inputs, dout, True)
    assert_near("out", out, out_ref, TOL[torch.float32])
    for name, got, want in zip(NAMES, grads, grads_ref):
        assert torch.isfinite(got).all(), name
        assert_near(f"d{name}", got, want, TOL[torch.float32])


@needs_cpu
def test_non_contiguous_inputs():
    base = make_inputs(2, 24, 19, 4, 2, seed=10)
    u = base[0].transpose(1, 2).contiguous().transpose(1, 2)  # (b, L, D) storage
    delta = torch.cat([base[1], base[1]], dim=-1)[..., :19]  # strided slice
    A = base[2].t().contiguous().t()
    B = base[3].transpose(2, 3).contiguous().transpose(2, 3)
    C = torch.stack([base[4], base[4]], dim=-1)[..., 0]
    D = torch.stack([base[5], base[5]], dim=-1)[:, 0]
    z = base[6].transpose(1, 2).contiguous().transpose(1, 2)
    bias = torch.stack([base[7], base[7]], dim=-1)[:, 1]
    args = (u, delta, A, B, C, D, z, bias)
    for t in args:
        assert not t.is_contiguous()
    with dhkd_kernels.use_backend("cpu"):
        out = dhkd_kernels.selective_scan(*args, delta_softplus=True)
        out_contig = dhkd_kernels.selective_scan(*base, delta_softplus=True)
    torch.testing.assert_close(out, out_contig, rtol=0, atol=0)
    dout = torch.randn(2, 24, 19, generator=torch.Generator().manual_seed(11))
    _, _, grads = run_backend("cpu", list(args), dout, True)
    _, _, grads_ref = run_reference(base, dout, True)
    for name, got, want in zip(NAMES, grads, grads_ref):
        assert_near(f"d{name}", got, want, TOL[torch.float32])


@needs_cpu
def test_three_d_B_C_equal_one_group():
    inputs = make_inputs(2, 6, 11, 4, seed=12)
    squeezed = inputs[:3] + [inputs[3][:, 0], inputs[4][:, 0]] + inputs[5:]
    with dhkd_kernels.use_backend("cpu"):
        torch.testing.assert_close(dhkd_kernels.selective_scan(*squeezed), dhkd_kernels.selective_scan(*inputs),
                                   rtol=0, atol=0)


@needs_cpu
def test_thread_counts_agree():
    """1 thread and 2 threads: the forward is bitwise equal, the summed gradients within rounding."""
    inputs = make_inputs(2, 70, 40, 16, seed=13)
    dout = torch.randn(2, 70, 40, generator=torch.Generator().manual_seed(14))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, last1, g1 = run_backend("cpu", inputs, dout, True)
        torch.set_num_threads(2)
        out2, last2, g2 = run_backend("cpu", inputs, dout, True)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    torch.testing.assert_close(last1, last2, rtol=0, atol=0)
    for name, a, b in zip(NAMES, g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@needs_cpu
@pytest.mark.filterwarnings("ignore:Input #")  # gradcheck's notice about fp32 inputs
def test_gradcheck_cpu_backend_fp32():
    """Finite differences in fp32 (loose tolerances) through the public op and its registered autograd."""
    assert gradcheck_fp32(dhkd_kernels.selective_scan, make_inputs(1, 2, 3, 2, seed=15), "cpu", delta_softplus=True)


@needs_cpu
@pytest.mark.parametrize("opts", [dict(), dict(has_d=False, has_z=False, has_bias=False),
                                  dict(var_B=False, var_C=False)], ids=["all", "no_optional", "constant_BC"])
def test_opcheck(opts):
    inputs = make_inputs(1, 4, 5, 2, 2, seed=16, **opts)
    args = [None if t is None else t.requires_grad_() for t in inputs] + [True, "cpu"]
    torch.library.opcheck(torch.ops.dhkd.selective_scan.default, args)


@needs_cpu
def test_torch_compile_fullgraph():
    inputs = make_inputs(1, 8, 12, 4, seed=17)

    def block(u, delta, A, B, C, D, z, bias):
        out, last = dhkd_kernels.selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                                return_last_state=True)
        return out, last

    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    for got, want in zip(compiled(*inputs), block(*inputs)):
        torch.testing.assert_close(got, want)


@needs_cpu
def test_cpu_kernel_rejects_bad_sizes_and_pointers():
    mod = _ext.load("_cpu")
    p = torch.zeros(4).data_ptr()
    ptrs = [p] * 10
    with pytest.raises(ValueError, match="must be positive"):
        mod.selective_scan_fwd(*ptrs, 1, 1, 1, 0, 1, True, True, 0, True)
    with pytest.raises(ValueError, match="does not divide"):
        mod.selective_scan_fwd(*ptrs, 1, 3, 1, 1, 2, True, True, 0, True)
    with pytest.raises(ValueError, match="dtype code"):
        mod.selective_scan_fwd(*ptrs, 1, 1, 1, 1, 1, True, True, 7, True)
    with pytest.raises(ValueError, match="null pointer for u"):
        mod.selective_scan_fwd(0, *ptrs[1:], 1, 1, 1, 1, 1, True, True, 0, True)
    from dhkd_kernels.selective_scan import cpu
    meta = [None if t is None else t.to("meta") for t in make_inputs(1, 2, 2, 2)]
    with pytest.raises(ValueError, match="needs CPU tensors"):
        cpu.forward(*meta, True)


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------

def _with(inputs, index, value):
    out = list(inputs)
    out[index] = value
    return out


@pytest.mark.parametrize("index,value,exc,match", [
    (0, torch.zeros(1, 6, 5, 1), ValueError, "u must have shape"),
    (1, torch.zeros(1, 6, 4), ValueError, "delta must have shape"),
    (2, torch.zeros(5, 2), ValueError, "A must have shape"),
    (2, torch.zeros(6, 2, dtype=torch.complex64), TypeError, "complex A is not supported"),
    (2, torch.zeros(6, 2, dtype=torch.float16), TypeError, "A must have dtype"),
    (3, torch.zeros(1, 4, 2, 5), ValueError, "B has 4 groups, which do not divide the 6 channels"),
    (3, torch.zeros(1, 2, 3, 5), ValueError, "B must have shape"),
    (4, torch.zeros(1, 2, 2, 5, dtype=torch.float16), TypeError, "C must have dtype"),
    (4, torch.zeros(6, 3), ValueError, "C must have shape"),
    (4, torch.zeros(1, 3, 2, 5), ValueError, "same number of groups"),
    (5, torch.zeros(5), ValueError, "D must have shape"),
    (6, torch.zeros(1, 6, 4), ValueError, "z must have shape"),
    (7, torch.zeros(6, dtype=torch.float16), TypeError, "delta_bias must have dtype"),
    (2, torch.zeros(6, 2, device="meta"), ValueError, "A is on meta"),
    (0, torch.zeros(1, 6, 5, dtype=torch.int32), TypeError, "u must have dtype"),
])
def test_bad_inputs_name_the_problem(index, value, exc, match):
    inputs = make_inputs(1, 6, 5, 2, 2)
    with pytest.raises(exc, match=match):
        dhkd_kernels.selective_scan(*_with(inputs, index, value))
    with pytest.raises(exc, match=match):
        check_selective_scan_inputs(*_with(inputs, index, value))


@pytest.mark.parametrize("shape", [(0, 4, 5, 2), (1, 0, 5, 2), (1, 4, 0, 2), (1, 4, 5, 0)])
def test_empty_input_is_an_error(shape):
    bsz, Dch, L, N = shape
    u = torch.zeros(bsz, Dch, L)
    with pytest.raises(ValueError, match="empty input"):
        dhkd_kernels.selective_scan(u, u, torch.zeros(Dch, N), torch.zeros(bsz, N, L), torch.zeros(bsz, N, L))
