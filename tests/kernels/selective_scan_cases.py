"""Reusable checks of a selective-scan backend against the float64 reference (forward, backward, last state).

Every backend's tests use these: ``check_backend(backend, device, shape, **options)`` runs the public op with
the backend forced and compares out, last_state and every input gradient with float64 autograd of the
reference; ``TINY_CASES`` are fixed cases small enough for the Triton interpreter; ``scan_cases`` draws
hypothesis cases (shapes incl. L = 1 and odd D, groups, variable/constant B and C, z, D, delta_bias,
softplus on/off).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import strategies as st

import dhkd_kernels
from dhkd_kernels import registry
from dhkd_kernels.selective_scan.reference import selective_scan_reference

OP = "selective_scan"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# Max error allowed, relative to max(1, max |reference|), per io dtype.
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
HYPOTHESIS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def require(backend: str, device: str) -> None:
    """Skip unless ``backend`` runs the selective scan on ``device`` tensors here."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not registry.is_available(OP, backend, device):
        pytest.skip(f"backend {backend!r} is not available for {device} tensors here")


def make_inputs(bsz, Dch, L, N, groups=1, dtype=torch.float32, var_B=True, var_C=True, has_d=True, has_z=True,
                has_bias=True, softplus=True, three_d=False, seed=0, device="cpu"):
    """[u, delta, A, B, C, D, z, delta_bias] in a stable regime (A < 0; positive dt when softplus is off).

    Variable B/C are (b, groups, N, L) in ``dtype`` ((b, N, L) if ``three_d``); constant ones (D, N) fp32.
    A, D, delta_bias stay fp32.
    """
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = rnd(bsz, Dch, L)
    if softplus:
        delta = 0.5 * rnd(bsz, Dch, L) - 0.5
        bias = 0.3 * rnd(Dch) if has_bias else None
    else:  # dt = delta + bias directly: keep it positive so that exp(dt·A) <= 1
        delta = 0.05 + 0.4 * torch.rand(bsz, Dch, L, generator=g)
        bias = 0.1 * torch.rand(Dch, generator=g) if has_bias else None
    A = -(0.1 + 2.0 * torch.rand(Dch, N, generator=g))

    def bc(variable):
        if not variable:
            return rnd(Dch, N)
        t = rnd(bsz, groups, N, L).to(dtype)
        return t[:, 0] if three_d else t

    B, C = bc(var_B), bc(var_C)
    D = rnd(Dch) if has_d else None
    z = rnd(bsz, Dch, L).to(dtype) if has_z else None
    io = [u.to(dtype), delta.to(dtype), A, B, C, D, z, bias]
    return [None if t is None else t.to(device) for t in io]


def run_backend(backend, inputs, dout, softplus):
    """(out, last_state, gradients of the given inputs) through the public op with ``backend`` forced."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    with dhkd_kernels.use_backend(backend):
        out, last = dhkd_kernels.selective_scan(*leaves, delta_softplus=softplus, return_last_state=True)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout)
    return out, last, grads


def run_reference(inputs, dout, softplus):
    """The same in float64 through the reference's autograd (on the CPU)."""
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_() for t in inputs]
    out, last = selective_scan_reference(*leaves, delta_softplus=softplus)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout.cpu().double())
    return out, last, grads


def assert_near(name, actual, expected, tol):
    """max |actual - expected| <= tol · max(1, max |expected|)."""
    scale = max(1.0, expected.abs().max().item())
    err = (actual.detach().cpu().double() - expected.detach()).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g} (max |ref| {scale:.3g})"


def check_backend(backend, device, shape, dtype=torch.float32, tol=None, seed=0, softplus=True, **options):
    """``backend`` vs the float64 reference on ``make_inputs(*shape, ...)``: out, last_state and every gradient,
    their dtypes, shapes and device. ``shape`` = (batch, D, L, N, groups)."""
    inputs = make_inputs(*shape, dtype=dtype, softplus=softplus, seed=seed, device=device, **options)
    dout = torch.randn(shape[:3], generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    out, last, grads = run_backend(backend, inputs, dout, softplus)
    out_ref, last_ref, grads_ref = run_reference(inputs, dout, softplus)
    assert out.dtype == dtype and out.shape == out_ref.shape and out.device.type == device
    assert last.dtype == torch.float32 and last.shape == last_ref.shape and not last.requires_grad
    tol = TOL[dtype] if tol is None else tol
    assert_near("out", out, out_ref, tol)
    assert_near("last_state", last, last_ref, tol)
    present = [(n, t) for n, t in zip(NAMES, inputs) if t is not None]
    assert len(grads) == len(present)
    for (name, inp), got, want in zip(present, grads, grads_ref):
        assert got.dtype == inp.dtype and got.shape == inp.shape and got.device == inp.device, name
        assert_near(f"d{name}", got, want, tol)


TINY_CASES = [  # (batch, D, L, N, groups), options: small enough for the Triton interpreter
    ((1, 1, 1, 1, 1), dict()),
    ((2, 3, 5, 4, 1), dict(has_d=False, has_z=False)),
    ((1, 4, 7, 2, 2), dict(has_bias=False, softplus=False)),
    ((2, 6, 9, 3, 3), dict(var_B=False)),
    ((1, 5, 6, 4, 1), dict(var_C=False, three_d=True)),
    ((1, 4, 3, 2, 1), dict(var_B=False, var_C=False, has_z=False)),
    ((1, 8, 20, 16, 2), dict()),
]


@st.composite
def scan_cases(draw, dtypes=(torch.float32,)):
    """Keyword arguments of :func:`check_backend` (without backend and device)."""
    kind = draw(st.sampled_from(["tiny", "tiny", "small", "small", "long"]))
    if kind == "tiny":
        Dch, L = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    elif kind == "small":  # several channel blocks and partial vectors
        Dch, L = draw(st.integers(1, 160)), draw(st.integers(1, 80))
    else:  # long sequences (several chunks and tiles), few channels to keep the reference cheap
        Dch, L = draw(st.integers(1, 24)), draw(st.integers(100, 700))
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if Dch % g == 0]))
    N = draw(st.sampled_from([1, 3, 16]))
    bsz = draw(st.integers(1, 2))
    var_B, var_C = draw(st.booleans()), draw(st.booleans())
    return dict(shape=(bsz, Dch, L, N, groups), dtype=draw(st.sampled_from(dtypes)), var_B=var_B, var_C=var_C,
                has_d=draw(st.booleans()), has_z=draw(st.booleans()), has_bias=draw(st.booleans()),
                softplus=draw(st.booleans()), three_d=groups == 1 and draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))
