"""ss2d_scan backends (cpu, triton, cuda) against the float64 PyTorch reference, forward and backward.

The C++ CPU backend gets the broad coverage (hypothesis-drawn shapes up to L = 4096, all dtypes and
options, non-contiguous inputs, opcheck, torch.compile); Triton runs in its interpreter without a GPU, so
its cases here are tiny. Backends that cannot run here are skipped.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import dhkd_kernels
from dhkd_kernels import _ext, registry
from dhkd_kernels.ss2d import reference
from dhkd_kernels.ss2d.ops import check_ss2d_inputs
from kernel_checks import gradcheck_fp32

OP = "ss2d_scan"
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
# Max error allowed, relative to max(1, max |reference|), per input dtype.
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
FULL_BACKENDS = [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]  # broad coverage
TINY_BACKENDS = FULL_BACKENDS + [("triton", "cpu")]  # + the Triton interpreter, tiny shapes only


def require(backend: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not registry.is_available(OP, backend, device):
        pytest.skip(f"backend {backend!r} is not available for {device} tensors here")


def make_inputs(bsz, H, W, Dch, N, dtype=torch.float32, has_d=True, has_bias=True, softplus=True, seed=0,
                device="cpu"):
    """Inputs in a stable regime (A < 0; positive dt when softplus is off). A, D, delta_bias stay fp32."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = rnd(bsz, H, W, Dch)
    if softplus:
        delta = 0.5 * rnd(bsz, H, W, 4, Dch) - 0.5
        bias = 0.3 * rnd(4, Dch) if has_bias else None
    else:  # dt = delta + bias directly: keep it positive so that exp(dt·A) <= 1
        delta = 0.05 + 0.4 * torch.rand(bsz, H, W, 4, Dch, generator=g)
        bias = 0.1 * torch.rand(4, Dch, generator=g) if has_bias else None
    A = -(0.1 + 2.0 * torch.rand(4, Dch, N, generator=g))
    B, C = rnd(bsz, H, W, 4, N), rnd(bsz, H, W, 4, N)
    D = rnd(4, Dch) if has_d else None
    io = [t.to(dtype) for t in (u, delta)] + [A] + [t.to(dtype) for t in (B, C)] + [D, bias]
    return [None if t is None else t.to(device) for t in io]


def run_backend(backend, inputs, dy, softplus, out_float):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    with dhkd_kernels.use_backend(backend):
        y = dhkd_kernels.ss2d_scan(*leaves, delta_softplus=softplus, out_float=out_float)
    wrt = [t for t in leaves if t is not None]
    return y, torch.autograd.grad(y, wrt, dy.to(y.dtype))


def run_reference(inputs, dy, softplus):
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_() for t in inputs]
    y = reference.ss2d_scan_reference(*leaves, delta_softplus=softplus, out_float=True)
    wrt = [t for t in leaves if t is not None]
    return y, torch.autograd.grad(y, wrt, dy.cpu().double())


def assert_near(name, actual, expected, tol):
    scale = max(1.0, expected.abs().max().item())
    err = (actual.detach().cpu().double() - expected).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g} (max |ref| {scale:.3g})"


def check_backend(backend, device, shape, dtype=torch.float32, has_d=True, has_bias=True, softplus=True,
                  out_float=False, seed=0, tol=None):
    inputs = make_inputs(*shape, dtype, has_d, has_bias, softplus, seed, device)
    dy = torch.randn(shape[:4], generator=torch.Generator().manual_seed(seed + 1)).to(device)
    if not out_float:
        dy = dy.to(dtype)  # the gradient arrives in y's dtype; the reference sees the same rounded values
    y, grads = run_backend(backend, inputs, dy, softplus, out_float)
    y_ref, grads_ref = run_reference(inputs, dy, softplus)
    assert y.dtype == (torch.float32 if out_float else dtype) and y.shape == y_ref.shape
    assert y.device.type == device
    tol = TOL[dtype] if tol is None else tol
    assert_near("y", y, y_ref, tol)
    present = [(n, t) for n, t in zip(GRAD_NAMES, inputs) if t is not None]
    assert len(grads) == len(present)
    for (name, inp), got, want in zip(present, grads, grads_ref):
        assert got.dtype == inp.dtype and got.shape == inp.shape, name
        assert_near(f"d{name}", got, want, tol)


# ---------------------------------------------------------------------------------------------------
# An independent naive SS2D: explicit index formulas, scalar state loop (float64, tiny shapes only)
# ---------------------------------------------------------------------------------------------------

def naive_pixel(k, t, H, W):
    """(row, col) visited at step t of direction k."""
    L = H * W
    s = L - 1 - t if k >= 2 else t
    return (s % H, s // H) if k % 2 else (s // W, s % W)


def naive_ss2d(u, delta, A, B, C, D, bias, softplus):
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    bsz, H, W, Dch = u.shape
    y = torch.zeros_like(u)
    for b in range(bsz):
        for k in range(4):
            for d in range(Dch):
                h = torch.zeros(A.shape[2], dtype=torch.float64)
                for t in range(H * W):
                    i, j = naive_pixel(k, t, H, W)
                    z = delta[b, i, j, k, d].item() + (bias[k, d].item() if bias is not None else 0.0)
                    dt = (z if z > 20 else math.log1p(math.exp(z))) if softplus else z
                    h = torch.exp(dt * A[k, d]) * h + dt * u[b, i, j, d] * B[b, i, j, k]
                    skip = D[k, d].item() * u[b, i, j, d] if D is not None else 0.0
                    y[b, i, j, d] += (C[b, i, j, k] * h).sum() + skip
    return y


@pytest.mark.parametrize("shape,softplus", [((1, 2, 3, 2, 3), True), ((2, 3, 1, 1, 2), False),
                                            ((1, 1, 4, 3, 1), True)])
def test_reference_matches_naive_loop(shape, softplus):
    inputs = [None if t is None else t.double() for t in make_inputs(*shape, softplus=softplus, seed=3)]
    want = naive_ss2d(*inputs, softplus)
    got = reference.ss2d_scan_reference(*inputs, delta_softplus=softplus, out_float=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if registry.is_available(OP, "cpu", "cpu"):
        fp32 = [None if t is None else t.float() for t in inputs]
        with dhkd_kernels.use_backend("cpu"):
            y = dhkd_kernels.ss2d_scan(*fp32, delta_softplus=softplus)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_naive_pixel_orders():
    """Direction orders on a 2×3 map: row-major, column-major and their reverses."""
    orders = [[naive_pixel(k, t, 2, 3) for t in range(6)] for k in range(4)]
    assert orders[0] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert orders[1] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert orders[2] == orders[0][::-1] and orders[3] == orders[1][::-1]


# ---------------------------------------------------------------------------------------------------
# Fixed cases on every backend (tiny enough for the Triton interpreter)
# ---------------------------------------------------------------------------------------------------

TINY_CASES = [  # (batch, H, W, D, N), options
    ((1, 1, 1, 2, 1), dict()),
    ((2, 2, 3, 3, 4), dict(has_d=False, out_float=True)),
    ((1, 3, 2, 5, 4), dict(has_bias=False, softplus=False)),
    ((1, 1, 5, 4, 2), dict()),
    ((1, 4, 1, 3, 2), dict(has_d=False, has_bias=False)),
]


@pytest.mark.parametrize("backend,device", TINY_BACKENDS, ids=[f"{b}-{d}" for b, d in TINY_BACKENDS])
@pytest.mark.parametrize("shape,opts", TINY_CASES, ids=[str(c[0]) for c in TINY_CASES])
def test_tiny_fp32(backend, device, shape, opts):
    require(backend, device)
    check_backend(backend, device, shape, **opts)


@pytest.mark.parametrize("backend,device", TINY_BACKENDS, ids=[f"{b}-{d}" for b, d in TINY_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_tiny_half(backend, device, dtype):
    require(backend, device)
    check_backend(backend, device, (2, 2, 3, 4, 4), dtype)


# ---------------------------------------------------------------------------------------------------
# Broad coverage with hypothesis (cpu, and the GPU backends when a GPU is present)
# ---------------------------------------------------------------------------------------------------

@st.composite
def ss2d_cases(draw, dtypes=(torch.float32,)):
    kind = draw(st.sampled_from(["tiny", "tiny", "line", "small", "small", "big"]))
    if kind == "tiny":
        H, W, Dch = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 40))
    elif kind == "line":  # 1×n or n×1 maps
        n = draw(st.integers(2, 64))
        H, W = draw(st.sampled_from([(1, n), (n, 1)]))
        Dch = draw(st.integers(1, 64))
    elif kind == "small":  # up to 256 channels: several channel blocks and partial vectors
        H, W, Dch = draw(st.integers(2, 16)), draw(st.integers(2, 16)), draw(st.integers(1, 256))
    else:  # long sequences (up to 64×64 = 4096 steps), few channels to keep the reference cheap
        H, W, Dch = draw(st.integers(24, 64)), draw(st.integers(24, 64)), draw(st.integers(1, 20))
    N = draw(st.sampled_from([1, 4] if kind == "big" else [1, 4, 16]))
    bsz = 1 if kind in ("big", "small") and H * W * Dch > 4096 else draw(st.integers(1, 3))
    return dict(shape=(bsz, H, W, Dch, N), dtype=draw(st.sampled_from(dtypes)), has_d=draw(st.booleans()),
                has_bias=draw(st.booleans()), softplus=draw(st.booleans()), out_float=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


HYPOTHESIS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend,device", FULL_BACKENDS, ids=[f"{b}-{d}" for b, d in FULL_BACKENDS])
@settings(max_examples=30, **HYPOTHESIS)
@given(case=ss2d_cases())
def test_random_shapes_fp32(backend, device, case):
    require(backend, device)
    event("long scan (L > 1024)" if case["shape"][1] * case["shape"][2] > 1024 else "L <= 1024")
    # Long scans accumulate more fp32 rounding (checked against float64).
    tol = TOL[torch.float32] * (5 if case["shape"][1] * case["shape"][2] > 1024 else 1)
    check_backend(backend, device, **case, tol=tol)


@pytest.mark.parametrize("backend,device", FULL_BACKENDS, ids=[f"{b}-{d}" for b, d in FULL_BACKENDS])
@settings(max_examples=12, **HYPOTHESIS)
@given(case=ss2d_cases(dtypes=(torch.float16, torch.bfloat16)))
def test_random_shapes_half(backend, device, case):
    require(backend, device)
    check_backend(backend, device, **case)


# ---------------------------------------------------------------------------------------------------
# CPU backend specifics
# ---------------------------------------------------------------------------------------------------

needs_cpu = pytest.mark.skipif(not registry.is_available(OP, "cpu", "cpu"),
                               reason=f"C++ SS2D kernels not built ({_ext.error('_cpu')})")


@needs_cpu
def test_cpu_is_the_default_for_cpu_tensors():
    assert registry.choose(OP, torch.device("cpu")) == "cpu"


@needs_cpu
def test_extreme_delta_matches_reference():
    """delta + bias far above the softplus threshold (identity) and far below (exp underflow)."""
    inputs = make_inputs(1, 2, 3, 20, 4, seed=5)
    inputs[1] = inputs[1] + torch.tensor([0.0, 30.0, -40.0, 19.0]).view(1, 1, 1, 4, 1)
    inputs[2] = inputs[2] * 0.005  # keep exp(dt·A) from underflowing so every gradient path stays live
    dy = torch.randn(1, 2, 3, 20, generator=torch.Generator().manual_seed(6))
    y, grads = run_backend("cpu", inputs, dy, True, True)
    y_ref, grads_ref = run_reference(inputs, dy, True)
    assert_near("y", y, y_ref, TOL[torch.float32])
    for name, got, want in zip(GRAD_NAMES, grads, grads_ref):
        assert torch.isfinite(got).all(), name
        assert_near(f"d{name}", got, want, TOL[torch.float32])


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_loads_keep_tiny_values(dtype):
    """fp16 subnormals (and bf16 values of the same size) are converted exactly by the vector loads:
    with u ~ 1e-6 the output is ~1e-6 and must match the reference relatively, not just absolutely."""
    inputs = make_inputs(1, 3, 2, 37, 4, dtype, seed=14)  # 37 channels: full vectors and a tail
    inputs[0] = (inputs[0].float() * 1e-6).to(dtype)
    if dtype == torch.float16:
        assert (inputs[0].abs() < 6.1e-5).all()  # below fp16's smallest normal
    with dhkd_kernels.use_backend("cpu"):
        y = dhkd_kernels.ss2d_scan(*inputs, out_float=True)
    y_ref = reference.ss2d_scan_reference(*[None if t is None else t.double() for t in inputs], out_float=True)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-12)


@needs_cpu
def test_dhkd_shape_64x64_forward():
    """The largest Gnet scan of the paper model (L = 4096, D = 128, N = 16) against float64 (forward only:
    float64 autograd of the reference is too slow at this size; the random shapes cover long backwards)."""
    inputs = make_inputs(1, 64, 64, 128, 16, seed=4)
    with dhkd_kernels.use_backend("cpu"):
        y = dhkd_kernels.ss2d_scan(*inputs, out_float=True)
    y_ref = reference.ss2d_scan_reference(*[t.double() for t in inputs], out_float=True)
    assert_near("y", y, y_ref, TOL[torch.float32])


@needs_cpu
def test_non_contiguous_inputs():
    bsz, H, W, Dch, N = 2, 5, 3, 24, 4
    base = make_inputs(bsz, H, W, Dch, N, seed=7)
    u = base[0].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # channels-first storage
    delta = torch.cat([base[1], base[1]], dim=-1)[..., :Dch]  # strided slice
    A = base[2].transpose(1, 2).contiguous().transpose(1, 2)
    B = base[3].transpose(1, 2).contiguous().transpose(1, 2)  # (b, W, H, 4, N) storage
    C = torch.stack([base[4], base[4]], dim=-1)[..., 0]
    D = base[5].t().contiguous().t()
    bias = base[6].t().contiguous().t()
    for t in (u, delta, A, B, C, D, bias):
        assert not t.is_contiguous()
    with dhkd_kernels.use_backend("cpu"):
        y = dhkd_kernels.ss2d_scan(u, delta, A, B, C, D, bias)
        y_contig = dhkd_kernels.ss2d_scan(*base)
    torch.testing.assert_close(y, y_contig, rtol=0, atol=0)
    y_ref = reference.ss2d_scan_reference(*[t.double() for t in base], out_float=True)
    assert_near("y", y, y_ref, TOL[torch.float32])


@needs_cpu
def test_thread_counts_agree():
    """Channel blocks and per-thread gradient partials: 1 thread and 2 threads give the same results."""
    inputs = make_inputs(2, 6, 5, 70, 16, seed=8)
    dy = torch.randn(2, 6, 5, 70, generator=torch.Generator().manual_seed(9))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, g1 = run_backend("cpu", inputs, dy, True, False)
        torch.set_num_threads(2)
        y2, g2 = run_backend("cpu", inputs, dy, True, False)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)  # forward: no cross-thread sums
    for name, a, b in zip(GRAD_NAMES, g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@needs_cpu
def test_backward_matches_float64_autograd_and_gradcheck():
    """The C++ backward vs float64 autograd of the reference, and gradcheck of the reference itself."""
    inputs = make_inputs(1, 2, 3, 3, 2, seed=10)
    check_backend("cpu", "cpu", (1, 2, 3, 3, 2), seed=10, out_float=True, tol=1e-6)
    f64 = tuple(t.double().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *a: reference.ss2d_scan_reference(*a, delta_softplus=True, out_float=True), f64)


@needs_cpu
@pytest.mark.filterwarnings("ignore:Input #")  # gradcheck's notice about fp32 inputs
def test_gradcheck_cpu_backend_fp32():
    """Finite differences in fp32 (loose tolerances) through the public op and its registered autograd."""
    assert gradcheck_fp32(dhkd_kernels.ss2d_scan, make_inputs(1, 2, 2, 2, 2, seed=11), "cpu", out_float=True)


@needs_cpu
@pytest.mark.parametrize("has_optional", [True, False], ids=["with_D_bias", "without"])
def test_opcheck(has_optional):
    inputs = make_inputs(1, 2, 3, 4, 2, has_d=has_optional, has_bias=has_optional, seed=12)
    args = [None if t is None else t.requires_grad_() for t in inputs] + [True, False, "cpu"]
    torch.library.opcheck(torch.ops.dhkd.ss2d_scan.default, args)


@needs_cpu
def test_torch_compile_fullgraph():
    inputs = make_inputs(1, 3, 4, 8, 4, seed=13)

    def block(u, delta, A, B, C, D, bias):  # the op alone: inductor then generates no C++ of its own
        return dhkd_kernels.ss2d_scan(u, delta, A, B, C, D, bias, out_float=True)

    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(*inputs), block(*inputs))


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------

def _with(inputs, index, value):
    out = list(inputs)
    out[index] = value
    return out


@pytest.mark.parametrize("index,value,exc,match", [
    (0, torch.zeros(1, 2, 3), ValueError, "u must have shape"),
    (1, torch.zeros(1, 2, 3, 3, 4), ValueError, "delta must have shape"),
    (2, torch.zeros(4, 5, 2), ValueError, "A must have shape"),
    (3, torch.zeros(1, 2, 3, 4, 3), ValueError, "B must have shape"),
    (4, torch.zeros(1, 2, 3, 4, 2, dtype=torch.float16), TypeError, "C must have dtype"),
    (5, torch.zeros(4, 3), ValueError, "D must have shape"),
    (6, torch.zeros(4, 4, dtype=torch.float16), TypeError, "delta_bias must have dtype"),
    (2, torch.zeros(4, 4, 2, device="meta"), ValueError, "A is on meta"),
    (0, torch.zeros(1, 2, 3, 4, dtype=torch.int32), TypeError, "u must have dtype"),
])
def test_bad_inputs_name_the_problem(index, value, exc, match):
    inputs = make_inputs(1, 2, 3, 4, 2)
    with pytest.raises(exc, match=match):
        dhkd_kernels.ss2d_scan(*_with(inputs, index, value))
    with pytest.raises(exc, match=match):
        check_ss2d_inputs(*_with(inputs, index, value))


def test_empty_input_is_an_error():
    inputs = make_inputs(1, 2, 3, 4, 2)
    empty = [t[:, :0] if i in (0, 1, 3, 4) else t for i, t in enumerate(inputs)]
    with pytest.raises(ValueError, match="empty input"):
        dhkd_kernels.ss2d_scan(*empty)


@needs_cpu
def test_cpu_kernel_rejects_bad_sizes_and_devices():
    mod = _ext.load("_cpu")
    u = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="must be positive"):
        mod.ss2d_fwd(*[u.data_ptr()] * 8, 1, 1, 1, 1, 0, 0, 0, True)
    with pytest.raises(ValueError, match="dtype code"):
        mod.ss2d_fwd(*[u.data_ptr()] * 8, 1, 1, 1, 1, 1, 7, 0, True)
    with pytest.raises(ValueError, match="null pointer for u"):
        mod.ss2d_fwd(0, *[u.data_ptr()] * 7, 1, 1, 1, 1, 1, 0, 0, True)
    from dhkd_kernels.ss2d import cpu
    meta = [None if t is None else t.to("meta") for t in make_inputs(1, 2, 2, 2, 2)]
    with pytest.raises(ValueError, match="needs CPU tensors"):
        cpu.forward(*meta, True, False)
