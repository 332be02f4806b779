"""Triton backend of ss2d_scan against the float64 PyTorch reference, through the public op.

The tests run on the GPU when there is one (then every test here carries the ``gpu`` marker) and on the CPU
otherwise, where the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 only
without a GPU, so CPU tensors cannot reach compiled Triton kernels). The interpreter is slow, so the shapes
are tiny; L = 21 and L = 35 span several 16-step chunks, i.e. several segments, and so
exercise the three passes (segment summaries, the carries between segments, the segments' outputs and
gradients from their true entering values).
"""
from __future__ import annotations

import pytest
import torch

import dhkd_kernels
from dhkd_kernels.ss2d import reference
from kernel_checks import assert_compiles_outside_interpreter

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from dhkd_kernels.triton_scan import adjoint_combine  # noqa: E402  (needs triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.gpu] if DEVICE == "cuda" else []
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}  # max error / max(1, max |ref|)


def make_inputs(bsz, H, W, Dch, N, dtype, has_d=True, has_bias=True, device="cpu", seed=0):
    """SS2D inputs in ``dtype`` (A, D, delta_bias in fp32), in a stable regime (A < 0, moderate dt)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = rnd(bsz, H, W, Dch)
    delta = 0.5 * rnd(bsz, H, W, 4, Dch) - 0.5
    A = -(0.1 + 2.0 * torch.rand(4, Dch, N, generator=g))
    B, C = rnd(bsz, H, W, 4, N), rnd(bsz, H, W, 4, N)
    D = rnd(4, Dch) if has_d else None
    bias = 0.3 * rnd(4, Dch) if has_bias else None
    io = [t.to(dtype) for t in (u, delta)] + [A] + [t.to(dtype) for t in (B, C)] + [D, bias]
    return [None if t is None else t.to(device) for t in io]


def run_triton(inputs, dy, delta_softplus, out_float):
    leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
    with dhkd_kernels.use_backend("triton"):
        y = dhkd_kernels.ss2d_scan(*leaves, delta_softplus=delta_softplus, out_float=out_float)
    wrt = [t for t in leaves if t is not None]
    return y, torch.autograd.grad(y, wrt, dy.to(y.dtype))


def run_reference(inputs, dy, delta_softplus):
    leaves = [None if t is None else t.double().requires_grad_() for t in inputs]
    y = reference.ss2d_scan_reference(*leaves, delta_softplus=delta_softplus, out_float=True)
    wrt = [t for t in leaves if t is not None]
    return y, torch.autograd.grad(y, wrt, dy.double())


def assert_near(name, actual, expected, tol):
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g} (max |ref| {scale:.3g})"


def check_against_reference(shape, dtype, has_d=True, has_bias=True, delta_softplus=True, out_float=False,
                            device=DEVICE, tol=None):
    inputs = make_inputs(*shape, dtype, has_d, has_bias, device)
    dy = torch.randn(shape[:3] + (shape[3],), generator=torch.Generator().manual_seed(1)).to(device)
    y, grads = run_triton(inputs, dy, delta_softplus, out_float)
    y_ref, grads_ref = run_reference(inputs, dy, delta_softplus)
    assert y.dtype == (torch.float32 if out_float else dtype) and y.shape == y_ref.shape
    tol = TOL[dtype] if tol is None else tol
    assert_near("y", y, y_ref, tol)
    present = [n for n, t in zip(GRAD_NAMES, inputs) if t is not None]
    for name, got, want, inp in zip(present, grads, grads_ref, [t for t in inputs if t is not None]):
        assert got.dtype == inp.dtype and got.shape == inp.shape, name
        assert_near(f"d{name}", got, want, tol)


# (batch, H, W, D, N)
FP32_CASES = [
    ((1, 1, 1, 2, 1), dict()),
    ((2, 2, 3, 3, 4), dict(has_d=False)),
    ((1, 3, 2, 5, 4), dict(has_bias=False, out_float=True)),
    ((2, 4, 4, 16, 4), dict(has_d=False, has_bias=False)),
    ((1, 4, 4, 6, 1), dict(delta_softplus=False)),
    ((1, 3, 7, 4, 2), dict()),  # L = 21: two chunks, the second one partial
]


@pytest.mark.parametrize("shape,opts", FP32_CASES, ids=[str(c[0]) for c in FP32_CASES])
def test_fp32_matches_float64_reference(shape, opts):
    check_against_reference(shape, torch.float32, **opts)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("out_float", [False, True], ids=["out_io", "out_fp32"])
def test_half_precision_io(dtype, out_float):
    check_against_reference((2, 2, 3, 4, 4), dtype, out_float=out_float)


def test_multi_chunk_half_precision():
    check_against_reference((1, 5, 7, 3, 2), torch.bfloat16, has_d=False)  # L = 35: three chunks


def test_segments_of_several_chunks(monkeypatch):
    """With at most 2 segments, L = 35 (three 16-step chunks) makes a segment of two chunks and a partial one:
    the chunk carry inside a segment and the segment carry between programs both run."""
    from dhkd_kernels.ss2d import triton as tri
    monkeypatch.setattr(tri, "MAX_SEGMENTS", 2)
    assert tri._plan(35, 3, 2)["seg_chunks"] == 2
    check_against_reference((1, 5, 7, 3, 2), torch.float32)


def test_extreme_delta_stays_finite_and_matches():
    """delta + bias of +100 / -100 (exp overflows fp32 there) gives the reference's values, no inf/nan."""
    inputs = make_inputs(1, 2, 2, 3, 2, torch.float32, device=DEVICE)
    inputs[1] = inputs[1] + torch.tensor([0.0, 100.0, -100.0, 0.0], device=DEVICE).view(1, 1, 1, 4, 1)
    inputs[2] = inputs[2] * 0.005  # keep exp(dt·A) away from underflow so every gradient path stays live
    dy = torch.randn(1, 2, 2, 3, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    y, grads = run_triton(inputs, dy, True, True)
    y_ref, grads_ref = run_reference(inputs, dy, True)
    assert_near("y", y, y_ref, TOL[torch.float32])
    for name, got, want in zip(GRAD_NAMES, grads, grads_ref):
        assert torch.isfinite(got).all(), name
        assert_near(f"d{name}", got, want, TOL[torch.float32])


def test_opcheck():
    inputs = make_inputs(1, 2, 2, 2, 2, torch.float32, device=DEVICE)
    args = [None if t is None else t.requires_grad_() for t in inputs] + [True, False, "triton"]
    torch.library.opcheck(torch.ops.dhkd.ss2d_scan.default, args)


@triton.jit
def _reverse_adjoint_scan(a_ptr, x_ptr, g_ptr, T: tl.constexpr):
    t = tl.arange(0, T)
    a, x = tl.load(a_ptr + t), tl.load(x_ptr + t)
    _, _, g = tl.associative_scan((a, tl.full(a.shape, 1.0, tl.float32), x), 0, adjoint_combine, reverse=True)
    tl.store(g_ptr + t, g)


def test_reverse_adjoint_scan_semantics():
    """The backward's reverse ``tl.associative_scan`` with the order-sensitive ``adjoint_combine`` gives
    g_t = x_t + a_{t+1}·g_{t+1}. Some Triton releases lowered reverse scans wrongly on GPUs (triton-lang/triton
    #4362, #8412); on a GPU this test isolates that from the rest of the backward."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(3)
    a, x = torch.rand(16, generator=gen) + 0.25, torch.randn(16, generator=gen)
    want, nxt = torch.empty(16, dtype=torch.float64), 0.0
    for t in range(15, -1, -1):  # g_t = x_t + a_{t+1}·g_{t+1}, g_16 = 0
        nxt = x[t].item() + (a[t + 1].item() * nxt if t < 15 else 0.0)
        want[t] = nxt
    a, x = a.to(device), x.to(device)
    g = torch.empty_like(x)
    _reverse_adjoint_scan[(1,)](a, x, g, T=16)
    torch.testing.assert_close(g.cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dhkd_shape_on_gpu(dtype):
    """DHKD's largest Gnet scan; L = 4096 accumulates more rounding than the tiny CPU cases, hence 5× TOL."""
    check_against_reference((1, 64, 64, 128, 16), dtype, device="cuda", out_float=dtype != torch.float32,
                            tol=5 * TOL[dtype])


_COMPILE_FOR_H200 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dhkd_kernels.ss2d import triton as tri

plan = tri._plan(64 * 64, 128, 16)
blocks = {n: plan[n] for n in ("BLOCK_T", "BLOCK_D", "BLOCK_N")}
flags = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, WITH_ADJOINT=True, REVERSE=True, BLOCK_S=tri.MAX_SEGMENTS)
io = {"u_ptr", "delta_ptr", "b_ptr", "c_ptr", "dy_ptr", "ddelta_ptr"}  # bf16 I/O; every other pointer is fp32
for fn in (tri._segment_summary_kernel, tri._segment_carry_kernel, tri._ss2d_fwd_kernel, tri._ss2d_bwd_kernel):
    const = {n: v for n, v in {**flags, **blocks}.items() if n in fn.arg_names}
    sig = {n: "constexpr" if n in const else ("*bf16" if n in io else "*fp32") if n.endswith("_ptr") else "i32"
           for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=4))
    assert "ex2.approx" in kernel.asm["ptx"] and kernel.asm["cubin"], fn.__name__
    print(fn.__name__, "shared bytes", kernel.metadata.shared)
print("compiled")
"""


def test_kernels_compile_for_h200(tmp_path):
    """The kernels build for sm_90 (ptxas included), which the interpreter alone would never check."""
    assert_compiles_outside_interpreter(_COMPILE_FOR_H200, tmp_path)
