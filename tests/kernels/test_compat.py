"""dhkd_kernels.compat: mamba_ssm's and VMamba's entry points on this package's selective scan.

A VMamba-structured SS2D block written here gives ss2d_scan's output through the compat path; a Mamba-style
block runs through the compat path equal to the reference; cross-scan/merge match VMamba's index maps; an
optional test compares against mamba_ssm's own ``selective_scan_ref`` when mamba_ssm is installed.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import dhkd_kernels
from dhkd_kernels import registry
from dhkd_kernels.compat import mamba, vmamba
from dhkd_kernels.ss2d.reference import to_sequence

from selective_scan_cases import TOL, assert_near, make_inputs

CPU = "cpu" if registry.is_available("selective_scan", "cpu", "cpu") else "reference"


def test_mamba_selective_scan_fn_return_conventions():
    inputs = make_inputs(2, 6, 9, 4, seed=1)
    out = mamba.selective_scan_fn(*inputs, delta_softplus=True)
    out2, last = mamba.selective_scan_fn(*inputs, delta_softplus=True, return_last_state=True)
    ref, ref_last = mamba.selective_scan_ref(*inputs, delta_softplus=True, return_last_state=True)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 6, 9) and last.shape == (2, 6, 4)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    assert_near("out", out, ref.double(), TOL[torch.float32])
    assert_near("last_state", last, ref_last.double(), TOL[torch.float32])
    with pytest.raises(TypeError, match="complex A is not supported"):
        mamba.selective_scan_fn(inputs[0], inputs[1], inputs[2].to(torch.complex64), *inputs[3:])


# ---------------------------------------------------------------------------------------------------
# Cross-scan / cross-merge
# ---------------------------------------------------------------------------------------------------

def vmamba_index_scan(x, scans):
    """The four sequences by explicit pixel indices (VMamba's definitions), (B, C, H, W) -> (B, 4, C, L)."""
    bsz, C, H, W = x.shape
    idx = torch.arange(H * W).reshape(H, W)
    rows = idx.flatten()
    cols = idx.t().flatten()
    orders = {0: [rows, cols, rows.flip(0), cols.flip(0)], 1: [rows] * 4, 2: [rows, rows, rows.flip(0), rows.flip(0)],
              3: [torch.rot90(idx, k).flatten() for k in range(4)]}[scans]
    flat = x.flatten(2)
    return torch.stack([flat[:, :, o] for o in orders], dim=1)


@pytest.mark.parametrize("scans", [0, 1, 2, 3])
@pytest.mark.parametrize("H,W", [(3, 5), (4, 4), (1, 6)])
def test_cross_scan_and_merge_are_vmambas_maps_and_adjoint(scans, H, W):
    g = torch.Generator().manual_seed(H * 10 + W + scans)
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    ys = vmamba.cross_scan_fn(x, scans=scans)
    torch.testing.assert_close(ys, vmamba_index_scan(x, scans), rtol=0, atol=0)
    # merge is the adjoint of scan: <scan(x), y> = <x, merge(y)>
    y = torch.randn(2, 4, 3, H, W, generator=g, dtype=torch.float64)
    merged = vmamba.cross_merge_fn(y, scans=scans)
    assert merged.shape == (2, 3, H * W)
    torch.testing.assert_close((ys * y.flatten(3)).sum(), (x.flatten(2) * merged).sum())
    (gx,) = torch.autograd.grad((ys * y.flatten(3)).sum(), x)
    torch.testing.assert_close(gx.flatten(2), merged)
    # channels-last layouts give the permuted results
    xl = x.detach().permute(0, 2, 3, 1)
    torch.testing.assert_close(vmamba.cross_scan_fn(xl, in_channel_first=False, out_channel_first=False, scans=scans),
                               ys.detach().permute(0, 3, 1, 2))
    torch.testing.assert_close(vmamba.cross_merge_fn(y.permute(0, 3, 4, 1, 2), in_channel_first=False,
                                                     out_channel_first=False, scans=scans), merged.transpose(1, 2))
    # the older autograd-function API
    x2 = x.detach().requires_grad_()
    if scans == 0:
        out = vmamba.CrossScan.apply(x2)
        torch.testing.assert_close(out, ys.detach())
        (g2,) = torch.autograd.grad((out * y.flatten(3)).sum(), x2)
        torch.testing.assert_close(g2.flatten(2), merged)
        torch.testing.assert_close(vmamba.CrossMerge.apply(y), merged)


def test_one_by_one_scans_each_direction_its_own_input():
    x = torch.randn(1, 4, 2, 3, 5, dtype=torch.float64)
    ys = vmamba.cross_scan_fn(x, one_by_one=True)
    for k in range(4):
        torch.testing.assert_close(ys[:, k], vmamba.cross_scan_fn(x[:, k])[:, k])
    back = vmamba.cross_merge_fn(ys.reshape(1, 4, 2, 3, 5), one_by_one=True)
    torch.testing.assert_close(back, x.flatten(3))


def test_cross_scan_errors():
    with pytest.raises(ValueError, match="scans must be"):
        vmamba.cross_scan_fn(torch.zeros(1, 2, 3, 3), scans=5)
    with pytest.raises(ValueError, match="4-D input"):
        vmamba.cross_scan_fn(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"\(B, 4, C, H, W\)"):
        vmamba.cross_merge_fn(torch.zeros(1, 3, 2, 3, 3))


# ---------------------------------------------------------------------------------------------------
# A VMamba-structured SS2D block through the compat path equals ss2d_scan
# ---------------------------------------------------------------------------------------------------

def vmamba_ss2d_core(x, dts_pix, A, Bs_pix, Cs_pix, Ds, delta_bias):
    """VMamba's SS2D core (forward_corev2 structure) written against the compat imports only.

    x (B, D, H, W); dts_pix (B, 4, D, H, W) and Bs_pix/Cs_pix (B, 4, N, H, W) are per-direction values at each
    pixel, scanned one by one; A (4·D, N); Ds, delta_bias (4·D,)."""
    from dhkd_kernels.compat.vmamba import cross_merge_fn, cross_scan_fn, selective_scan_fn

    B, D, H, W = x.shape
    K, L = 4, H * W
    xs = cross_scan_fn(x, in_channel_first=True, out_channel_first=True, scans=0)  # (B, 4, D, L)
    dts = cross_scan_fn(dts_pix, one_by_one=True)  # (B, 4, D, L)
    Bs = cross_scan_fn(Bs_pix, one_by_one=True)  # (B, 4, N, L)
    Cs = cross_scan_fn(Cs_pix, one_by_one=True)
    xs, dts = xs.view(B, -1, L), dts.contiguous().view(B, -1, L)
    ys = selective_scan_fn(xs, dts, A, Bs, Cs, Ds, delta_bias, delta_softplus=True, oflex=True)
    return cross_merge_fn(ys.view(B, K, -1, H, W), in_channel_first=True, out_channel_first=True, scans=0)


@pytest.mark.parametrize("H,W", [(4, 5), (8, 8)])
def test_vmamba_ss2d_block_via_compat_equals_ss2d_scan(H, W):
    g = torch.Generator().manual_seed(H + W)
    bsz, D, N = 2, 24, 4
    u = torch.randn(bsz, H, W, D, generator=g)  # channels-last, as ss2d_scan takes it
    delta = 0.5 * torch.randn(bsz, H, W, 4, D, generator=g) - 0.5
    A = -(0.1 + torch.rand(4, D, N, generator=g))
    Bm, Cm = torch.randn(2, bsz, H, W, 4, N, generator=g)
    Dw, bias = torch.randn(4, D, generator=g), 0.3 * torch.randn(4, D, generator=g)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, Dw, bias)]
    want = dhkd_kernels.ss2d_scan(*leaves, out_float=True)  # (b, H, W, D)
    leaves2 = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, Dw, bias)]
    u2, delta2, A2, B2, C2, D2, bias2 = leaves2
    with dhkd_kernels.use_backend(CPU):
        got = vmamba_ss2d_core(u2.permute(0, 3, 1, 2), delta2.permute(0, 3, 4, 1, 2), A2.reshape(4 * D, N),
                               B2.permute(0, 3, 4, 1, 2), C2.permute(0, 3, 4, 1, 2), D2.reshape(-1),
                               bias2.reshape(-1))  # (B, D, L)
    assert got.dtype == torch.float32
    got = got.transpose(1, 2).reshape(bsz, H, W, D)
    assert_near("y", got, want.double(), TOL[torch.float32])
    dy = torch.randn(bsz, H, W, D, generator=g)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "delta_bias"),
                          torch.autograd.grad(got, leaves2, dy), torch.autograd.grad(want, leaves, dy)):
        assert_near(f"d{name}", a, b.double(), TOL[torch.float32])


def test_vmamba_selective_scan_fn_half_keeps_fp32_output_with_oflex():
    inputs = make_inputs(1, 8, 6, 4, 4, dtype=torch.bfloat16, has_z=False, seed=2)
    u, delta, A, B, C, D, _, bias = inputs
    out = vmamba.selective_scan_fn(u, delta, A, B, C, D, bias, True, oflex=True)
    out16 = vmamba.selective_scan_fn(u, delta, A, B, C, D, bias, True, oflex=False)
    assert out.dtype == torch.float32 and out16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown VMamba selective-scan backend"):
        vmamba.selective_scan_fn(u, delta, A, B, C, D, bias, True, backend="cudnn")


# ---------------------------------------------------------------------------------------------------
# A Mamba-style block through the compat path equals the reference
# ---------------------------------------------------------------------------------------------------

class MambaStyleBlock(torch.nn.Module):
    """The S6 mixer of a Mamba block (in_proj -> causal depth-wise conv -> x_proj/dt_proj -> selective scan
    with z gate -> out_proj), written against mamba_ssm's ``selective_scan_fn`` API."""

    def __init__(self, d_model=16, d_state=8, expand=2, dt_rank=4, d_conv=4):
        super().__init__()
        d_inner = expand * d_model
        self.d_state, self.dt_rank = d_state, dt_rank
        self.in_proj = torch.nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = torch.nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = torch.nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = torch.nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = torch.nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = torch.nn.Parameter(torch.ones(d_inner))
        self.out_proj = torch.nn.Linear(d_inner, d_model, bias=False)

    def forward(self, hidden):  # (B, L, d_model)
        from dhkd_kernels.compat.mamba import selective_scan_fn

        L = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.transpose(1, 2))  # (B, d_inner, L)
        y = selective_scan_fn(x, dt, -torch.exp(self.A_log.float()), B.transpose(1, 2).contiguous(),
                              C.transpose(1, 2).contiguous(), self.D.float(), z=z,
                              delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


def test_mamba_style_block_via_compat_equals_reference():
    torch.manual_seed(0)
    block = MambaStyleBlock()
    hidden = torch.randn(2, 37, 16)

    def run(backend):
        block.zero_grad()
        with dhkd_kernels.use_backend(backend):
            out = block(hidden)
        out.pow(2).sum().backward()
        return out.detach(), [p.grad.clone() for p in block.parameters()]

    out, grads = run(CPU)
    out_ref, grads_ref = run("reference")
    assert_near("out", out, out_ref.double(), TOL[torch.float32])
    for (name, _), a, b in zip(block.named_parameters(), grads, grads_ref):
        assert_near(f"d{name}", a, b.double(), 1e-4)


# ---------------------------------------------------------------------------------------------------
# Optional: mamba_ssm's own pure-PyTorch reference, when mamba_ssm is installed
# ---------------------------------------------------------------------------------------------------

def _mamba_ssm_ref():
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    except Exception:  # e.g. its CUDA/Triton imports fail on this machine
        return None
    return selective_scan_ref


@pytest.mark.skipif(_mamba_ssm_ref() is None, reason="mamba_ssm (selective_scan_ref) is not installed here")
@pytest.mark.parametrize("opts", [dict(), dict(var_B=False), dict(three_d=True, has_z=False)])
def test_against_mamba_ssm_selective_scan_ref(opts):
    ref = _mamba_ssm_ref()
    inputs = make_inputs(2, 6, 11, 4, 2 if not opts.get("three_d") else 1, seed=3, **opts)
    u, delta, A, B, C, D, z, bias = inputs
    want, want_last = ref(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    got, last = mamba.selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    assert_near("out", got, want.double(), TOL[torch.float32])
    assert_near("last_state", last, want_last.double(), TOL[torch.float32])


def test_to_sequence_agrees_with_cross_scan():
    """The SS2D reference's direction orders are VMamba's cross-scan orders."""
    x = torch.randn(1, 3, 4, 2, dtype=torch.float64)  # (B, H, W, C)
    ys = vmamba.cross_scan_fn(x, in_channel_first=False, out_channel_first=False)  # (B, L, 4, C)
    for k in range(4):
        torch.testing.assert_close(ys[:, :, k], to_sequence(x, k))
