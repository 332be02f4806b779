"""Backend-vs-reference checks of selective_scan shared by the Triton and CUDA tests.

A backend runs through the public op (custom op, autograd) and is compared with the float64 reference and its
autograd gradients: out, last_state and the gradient of every input, each within a tolerance scaled by the
reference's largest magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import dhkd_kernels
from dhkd_kernels.selective_scan.ops import selective_scan
from dhkd_kernels.selective_scan.reference import selective_scan_reference

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}  # max error / max(1, max |ref|)


@dataclass(frozen=True)
class Case:
    """One selective-scan configuration: sizes and which optional inputs are present."""

    batch: int = 1
    dim: int = 4
    seqlen: int = 21
    dstate: int = 4
    groups: int = 1  # groups of the variable B/C; 0: mamba's 3-D (batch, N, L) layout
    B_var: bool = True
    C_var: bool = True
    has_D: bool = True
    has_z: bool = True
    has_bias: bool = True
    softplus: bool = True

    def __str__(self) -> str:
        flags = "".join(f for f, on in (("B", self.B_var), ("C", self.C_var), ("D", self.has_D), ("z", self.has_z),
                                        ("b", self.has_bias), ("s", self.softplus)) if on)
        return f"{self.batch}x{self.dim}x{self.seqlen}n{self.dstate}g{self.groups}-{flags}"


def make_inputs(case: Case, dtype: torch.dtype, device="cpu", seed: int = 0) -> list:
    """Inputs of ``case`` in a stable regime (A < 0, moderate dt); io tensors in ``dtype``, parameters fp32."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    b, d, L, N = case.batch, case.dim, case.seqlen, case.dstate
    proj_shape = (b, N, L) if case.groups == 0 else (b, case.groups, N, L)
    u = rnd(b, d, L).to(dtype)
    if case.softplus:
        delta = (0.5 * rnd(b, d, L) - 0.5).to(dtype)
    else:  # dt = delta + bias is used as is: keep it positive
        delta = (0.4 + 0.3 * torch.rand(b, d, L, generator=g)).to(dtype)
    A = -(0.1 + 2.0 * torch.rand(d, N, generator=g))
    B = rnd(*proj_shape).to(dtype) if case.B_var else rnd(d, N)
    C = rnd(*proj_shape).to(dtype) if case.C_var else rnd(d, N)
    D = rnd(d) if case.has_D else None
    z = rnd(b, d, L).to(dtype) if case.has_z else None
    bias = 0.1 * torch.rand(d, generator=g) if case.has_bias else None
    return [None if t is None else t.to(device) for t in (u, delta, A, B, C, D, z, bias)]


def run_backend(backend: str, inputs: list, dout: torch.Tensor, softplus: bool):
    """(out, last_state, gradients of the present inputs) of the public op on ``backend``."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    with dhkd_kernels.use_backend(backend):
        out, last = selective_scan(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                                   delta_softplus=softplus, return_last_state=True)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout.to(out.dtype))
    return out, last, grads


def run_reference(inputs: list, dout: torch.Tensor, softplus: bool):
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    out, last = selective_scan_reference(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                                         delta_softplus=softplus)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout.double())
    return out, last, grads


def assert_near(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g} (max |ref| {scale:.3g})"


def check_backend(backend: str, case: Case, dtype: torch.dtype, device="cpu", tol: float | None = None) -> None:
    """``backend`` matches the float64 reference on ``case``: out, last_state, every gradient (dtype and shape
    of its input, values within tolerance)."""
    inputs = make_inputs(case, dtype, device)
    dout = torch.randn(case.batch, case.dim, case.seqlen, generator=torch.Generator().manual_seed(1)).to(device)
    out, last, grads = run_backend(backend, inputs, dout, case.softplus)
    out_ref, last_ref, grads_ref = run_reference(inputs, dout, case.softplus)  # float64, on the same device
    tol = TOL[dtype] if tol is None else tol
    assert out.dtype == dtype and out.shape == out_ref.shape
    assert last.dtype == torch.float32 and last.shape == last_ref.shape
    assert_near("out", out, out_ref, tol)
    assert_near("last_state", last, last_ref, tol)
    present = [(n, t) for n, t in zip(NAMES, inputs) if t is not None]
    for (name, inp), got, want in zip(present, grads, grads_ref):
        assert got.dtype == inp.dtype and got.shape == inp.shape, name
        assert torch.isfinite(got).all(), f"d{name} has non-finite values"
        assert_near(f"d{name}", got, want, tol)


def opcheck_args(case: Case, backend: str, device="cpu") -> list:
    """Arguments of ``torch.ops.dhkd.selective_scan`` for ``case`` (normalised layout, requiring grad)."""
    u, delta, A, B, C, D, z, bias = make_inputs(case, torch.float32, device)
    B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (B, C))
    args = [u, delta, A, B, C, D, z, bias]
    return [None if t is None else t.requires_grad_() for t in args] + [case.softplus, backend]
