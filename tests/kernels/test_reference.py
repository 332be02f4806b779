"""The plain-PyTorch references against independent naive implementations, and the backend registry."""
import math
import sys
import types
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dhkd_kernels
from dhkd_kernels import registry
from dhkd_kernels.scmm.reference import scmm_modulate_reference
from dhkd_kernels.selective_scan.reference import selective_scan_reference
from dhkd_kernels.ss2d.reference import ss2d_scan_reference


def softplus(x):
    return x if x > 20 else math.log1p(math.exp(x))


def naive_selective_scan(u, delta, A, B, C, D, bias):
    """Scalar loops over batch, channel, step and state (float64 numpy)."""
    u, delta, A, B, C = (t.double().numpy() for t in (u, delta, A, B, C))
    bsz, Dch, L = u.shape
    G = B.shape[1]
    y = np.zeros_like(u)
    for b in range(bsz):
        for d in range(Dch):
            g = d // (Dch // G)
            h = np.zeros(A.shape[1])
            for t in range(L):
                dt = softplus(delta[b, d, t] + (bias[d].item() if bias is not None else 0.0))
                h = np.exp(dt * A[d]) * h + dt * B[b, g, :, t] * u[b, d, t]
                y[b, d, t] = (C[b, g, :, t] * h).sum() + (D[d].item() if D is not None else 0.0) * u[b, d, t]
    return torch.from_numpy(y)


def naive_ss2d(u, delta, A, B, C, D, bias):
    """Per-direction loops: for each direction walk the pixels in its order and add y_k into the pixel."""
    u, delta, A, B, C = (t.double().numpy() for t in (u, delta, A, B, C))
    bsz, H, W, Dch = u.shape
    L = H * W
    y = np.zeros_like(u)
    orders = [
        [(t // W, t % W) for t in range(L)],          # row-major
        [(t % H, t // H) for t in range(L)],          # column-major
    ]
    orders += [orders[0][::-1], orders[1][::-1]]      # reversed
    for b in range(bsz):
        for k, order in enumerate(orders):
            for d in range(Dch):
                h = np.zeros(A.shape[2])
                for (i, j) in order:
                    dt = softplus(delta[b, i, j, k, d] + (bias[k, d].item() if bias is not None else 0.0))
                    h = np.exp(dt * A[k, d]) * h + dt * B[b, i, j, k] * u[b, i, j, d]
                    y[b, i, j, d] += (C[b, i, j, k] * h).sum() + (D[k, d].item() if D is not None else 0) * u[b, i, j, d]
    return torch.from_numpy(y)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("L", [1, 7, 70])  # 70 > one reference chunk (64)
def test_selective_scan_reference_matches_naive(groups, L):
    g = torch.Generator().manual_seed(L + groups)
    bsz, Dch, N = 2, 4, 3
    u = torch.randn(bsz, Dch, L, generator=g)
    delta = torch.randn(bsz, Dch, L, generator=g)
    A = -torch.rand(Dch, N, generator=g) - 0.2
    B = torch.randn(bsz, groups, N, L, generator=g)
    C = torch.randn(bsz, groups, N, L, generator=g)
    D, bias = torch.randn(Dch, generator=g), torch.randn(Dch, generator=g)
    want = naive_selective_scan(u, delta, A, B, C, D, bias)
    got = dhkd_kernels.selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double(),
                                      delta_bias=bias.double(), delta_softplus=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got32, _ = selective_scan_reference(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("H,W", [(1, 1), (1, 5), (4, 1), (3, 5), (9, 8)])
def test_ss2d_reference_matches_naive(H, W):
    g = torch.Generator().manual_seed(H * 10 + W)
    bsz, Dch, N = 2, 3, 4
    u = torch.randn(bsz, H, W, Dch, generator=g, dtype=torch.float64)
    delta = torch.randn(bsz, H, W, 4, Dch, generator=g, dtype=torch.float64)
    A = -torch.rand(4, Dch, N, generator=g, dtype=torch.float64) - 0.1
    B = torch.randn(bsz, H, W, 4, N, generator=g, dtype=torch.float64)
    C = torch.randn(bsz, H, W, 4, N, generator=g, dtype=torch.float64)
    D, bias = torch.randn(4, Dch, generator=g, dtype=torch.float64), torch.randn(4, Dch, generator=g, dtype=torch.float64)
    want = naive_ss2d(u, delta, A, B, C, D, bias)
    torch.testing.assert_close(ss2d_scan_reference(u, delta, A, B, C, D, bias), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ss2d_scan_reference(u, delta, A, B, C, None, None),
                               naive_ss2d(u, delta, A, B, C, None, None), rtol=1e-10, atol=1e-10)


def test_ss2d_reference_long_sequence_is_chunk_invariant():
    """L = 40×40 crosses many chunks; a one-chunk-per-step scan must give the same answer."""
    from dhkd_kernels.ss2d import reference

    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 40, 40, 8, generator=g, dtype=torch.float64)
    delta = torch.randn(1, 40, 40, 4, 8, generator=g, dtype=torch.float64) - 2
    A = -torch.rand(4, 8, 16, generator=g, dtype=torch.float64) * 4
    B, C = torch.randn(2, 1, 40, 40, 4, 16, generator=g, dtype=torch.float64)
    y = reference.ss2d_scan_reference(u, delta, A, B, C)
    y1 = sum(reference.from_sequence(
        reference.scan_chunked(reference.to_sequence(u, k)[:, :, None],
                               reference.to_sequence(F.softplus(delta[:, :, :, k]), k)[:, :, None],
                               A[k][None], reference.to_sequence(B[:, :, :, k], k)[:, :, None],
                               reference.to_sequence(C[:, :, :, k], k)[:, :, None], chunk=1)[:, :, 0], k, 40, 40)
        for k in range(4))
    torch.testing.assert_close(y, y1, rtol=1e-9, atol=1e-9)


def test_ss2d_reference_gradcheck():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(1, 2, 3, 2, generator=g, dtype=torch.float64),
            torch.randn(1, 2, 3, 4, 2, generator=g, dtype=torch.float64),
            -torch.rand(4, 2, 2, generator=g, dtype=torch.float64) - 0.1,
            torch.randn(1, 2, 3, 4, 2, generator=g, dtype=torch.float64),
            torch.randn(1, 2, 3, 4, 2, generator=g, dtype=torch.float64),
            torch.randn(4, 2, generator=g, dtype=torch.float64),
            torch.randn(4, 2, generator=g, dtype=torch.float64)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: dhkd_kernels.ss2d_scan(*a), args)


def naive_scmm(x, wa, ba, wb, bb, wg, bg, wp, bp):
    """Explicit loops for the two-scale depth-wise branch (adaptive windows, nearest upsampling)."""
    x = x.double()
    bsz, Cc, H, W = x.shape
    half = Cc // 2
    oh, ow = H // 2, W // 2
    s = torch.zeros_like(x)
    xp = F.pad(x, (1, 1, 1, 1))
    for c in range(half):  # full-scale depth-wise 3×3
        for i in range(H):
            for j in range(W):
                s[:, c, i, j] = (xp[:, c, i:i + 3, j:j + 3] * wa[c, 0].double()).sum((1, 2)) + ba[c]
    pooled = torch.zeros(bsz, half, oh, ow, dtype=torch.float64)
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * H) // oh, -(-((i + 1) * H) // oh)
            c0, c1 = (j * W) // ow, -(-((j + 1) * W) // ow)
            pooled[:, :, i, j] = x[:, half:, r0:r1, c0:c1].amax((2, 3))
    pp = F.pad(pooled, (1, 1, 1, 1))
    conv_b = torch.zeros_like(pooled)
    for c in range(half):
        for i in range(oh):
            for j in range(ow):
                conv_b[:, c, i, j] = (pp[:, c, i:i + 3, j:j + 3] * wb[c, 0].double()).sum((1, 2)) + bb[c]
    for i in range(H):
        for j in range(W):
            s[:, half:, i, j] = conv_b[:, :, (i * oh) // H, (j * ow) // W]
    m = torch.relu(torch.einsum("oc,bchw->bohw", wg[:, :, 0, 0].double(), s) + bg.double()[:, None, None])
    y = m * x + x
    return torch.einsum("oc,bchw->bohw", wp[:, :, 0, 0].double(), y) + bp.double()[:, None, None] + x


@pytest.mark.parametrize("H,W", [(2, 2), (5, 7), (8, 6)])
def test_scmm_reference_matches_naive(H, W):
    g = torch.Generator().manual_seed(H + W)
    Cc = 6
    x = torch.randn(2, Cc, H, W, generator=g)
    params = [torch.randn(Cc // 2, 1, 3, 3, generator=g), torch.randn(Cc // 2, generator=g),
              torch.randn(Cc // 2, 1, 3, 3, generator=g), torch.randn(Cc // 2, generator=g),
              torch.randn(Cc, Cc, 1, 1, generator=g), torch.randn(Cc, generator=g),
              torch.randn(Cc, Cc, 1, 1, generator=g), torch.randn(Cc, generator=g)]
    want = naive_scmm(x, *params)
    got = scmm_modulate_reference(x.double(), *[p.double() for p in params])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_ss2d_input_errors():
    u = torch.randn(1, 2, 3, 4)
    delta, A = torch.randn(1, 2, 3, 4, 4), -torch.rand(4, 4, 2)
    B = C = torch.randn(1, 2, 3, 4, 2)
    with pytest.raises(ValueError, match="delta must have shape"):
        dhkd_kernels.ss2d_scan(u, delta[..., :3], A, B, C)
    with pytest.raises(TypeError, match="B must have dtype"):
        dhkd_kernels.ss2d_scan(u, delta, A, B.half(), C)
    with pytest.raises(TypeError, match="A must have dtype"):
        dhkd_kernels.ss2d_scan(u, delta, A.half(), B, C)
    with pytest.raises(ValueError, match="A must have shape"):
        dhkd_kernels.ss2d_scan(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="D must have shape"):
        dhkd_kernels.ss2d_scan(u, delta, A, B, C, D=torch.ones(4))
    with pytest.raises(TypeError, match="u must have dtype"):
        dhkd_kernels.ss2d_scan(u.int(), delta, A, B, C)
    with pytest.raises(ValueError, match="meta"):
        dhkd_kernels.ss2d_scan(u, delta.to("meta"), A, B, C)


def test_backend_selection(monkeypatch):
    x = torch.device("cpu")
    default = registry.choose("ss2d_scan", x)
    assert default == ("cpu" if registry.is_available("ss2d_scan", "cpu", "cpu") else "reference")
    with dhkd_kernels.use_backend("reference"):
        assert registry.choose("ss2d_scan", x) == "reference"
        with dhkd_kernels.use_backend(None):  # nested: back to the automatic choice
            assert registry.choose("ss2d_scan", x) == default
    monkeypatch.setenv("DHKD_BACKEND", "reference")
    assert registry.choose("ss2d_scan", x) == "reference"
    monkeypatch.setenv("DHKD_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        registry.choose("ss2d_scan", x)
    monkeypatch.setenv("DHKD_BACKEND", "fastest")
    with pytest.raises(ValueError, match="DHKD_BACKEND"):
        registry.choose("ss2d_scan", x)
    monkeypatch.delenv("DHKD_BACKEND")
    with pytest.raises(ValueError, match="unknown backend"):
        with dhkd_kernels.use_backend("cudnn"):
            pass
    info = dhkd_kernels.backends()
    assert info["extensions"]["_cpu"] == "built"
    assert "ss2d_scan" in info["ops"] and "scmm_modulate" in info["ops"]


def test_missing_kernels_are_a_clear_error():
    from dhkd_kernels import _ext

    with pytest.raises(RuntimeError, match=r"the frobnicate kernels are not available \(dhkd_kernels\._cpu: "):
        _ext.require("_cpu", "frobnicate_fwd", "the frobnicate kernels")
    with pytest.raises(RuntimeError, match=r"dhkd_kernels\._nonexistent: not built"):
        _ext.require("_nonexistent", "x", "the x kernels")


class _TwoFunctions(typing.Protocol):
    def forward(self, x): ...

    def backward(self, dy, x): ...


def test_registry_checks_backends_against_the_protocol(monkeypatch):
    monkeypatch.setattr(registry, "_ops", dict(registry.ops()))  # the fake op stays out of the real registry
    package, complete, partial = (types.ModuleType(n) for n in ("fakeop", "fakeop.triton", "fakeop.cpu"))
    complete.forward = complete.backward = lambda *args: None
    partial.forward = lambda x: x
    for mod in (package, complete, partial):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    op = registry.register_op("fake", "fakeop", _TwoFunctions, symbol="fake_fwd")
    assert op.implementation("triton") is complete
    with pytest.raises(TypeError, match=r"fakeop.cpu does not implement _TwoFunctions: missing backward"):
        op.implementation("cpu")
    with pytest.raises(ValueError, match="no 'reference' kernel backend"):
        op.implementation("reference")
    assert registry.available_backends("fake", "cpu")[0] == "reference"  # no _cpu symbol fake_fwd
    with pytest.raises(ValueError, match="no backend protocol"):
        registry.register_op("fake2", "fakeop", None, backends=("triton",))
    with pytest.raises(ValueError, match="need the symbol"):
        registry.register_op("fake2", "fakeop", _TwoFunctions, backends=("cpu",))
    with pytest.raises(KeyError, match="unknown op 'nope'"):
        registry.choose("nope", torch.device("cpu"))


def _sized_backend(name, limit):
    """A fake backend module implementing _TwoFunctions that declines d_state above ``limit``."""
    mod = types.ModuleType(name)
    mod.forward = mod.backward = lambda *args: None
    mod.unsupported = lambda *, d_state: None if d_state <= limit else f"d_state {d_state} is above {limit}"
    return mod


def test_automatic_choice_skips_a_backend_that_declines_the_sizes(monkeypatch):
    monkeypatch.setattr(registry, "_ops", dict(registry.ops()))
    for mod in (types.ModuleType("sizedop"), _sized_backend("sizedop.cpu", 16), _sized_backend("sizedop.triton", 64)):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    # No sizedop.cuda module exists: the unavailable cuda backend must never be imported for the check.
    op = registry.register_op("sized", "sizedop", _TwoFunctions, symbol="sized_fwd",
                              preference={"cpu": ["cuda", "cpu", "triton", "reference"]})
    op.available.update(cpu=lambda d: d == "cpu", triton=lambda d: d == "cpu", cuda=lambda d: False)
    x = torch.zeros(1)
    assert op.backend_for(x, d_state=16) == "cpu"  # supported: the first available backend
    assert op.backend_for(x, d_state=17) == "triton"  # cpu declines: the next one
    assert op.backend_for(x, d_state=65) == "reference"  # both decline
    assert op.backend_for(x) == "cpu"  # no sizes, nothing to decline
    with dhkd_kernels.use_backend("triton"):
        assert op.backend_for(x, d_state=64) == "triton"
        with pytest.raises(ValueError, match=r"backend 'triton' was requested for sized but cannot run these "
                                             r"inputs: d_state 65 is above 64 \(backends that can: \['reference'\]\)"):
            op.backend_for(x, d_state=65)
        assert op.backend_for(x.double(), d_state=65) == "reference"  # float64 runs the reference anyway
    monkeypatch.setenv("DHKD_BACKEND", "cpu")
    with pytest.raises(ValueError, match=r"d_state 17 is above 16 \(backends that can: \['reference', 'triton'\]\)"):
        op.backend_for(x, d_state=17)


def _ss2d_inputs(N):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2, 3, 4, generator=g)
    return (u, torch.randn(1, 2, 3, 4, 4, generator=g), -torch.rand(4, 4, N, generator=g) - 0.5,
            torch.randn(1, 2, 3, 4, N, generator=g), torch.randn(1, 2, 3, 4, N, generator=g))


def _selective_scan_inputs(N):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 5, generator=g), torch.rand(1, 4, 5, generator=g), -torch.rand(4, N, generator=g) - 0.5,
            torch.randn(1, N, 5, generator=g), torch.randn(1, N, 5, generator=g))


WRAPPERS = [("ss2d_scan", _ss2d_inputs, dhkd_kernels.ss2d_scan),
            ("selective_scan", _selective_scan_inputs, dhkd_kernels.selective_scan)]


@pytest.mark.parametrize("op_name, make, run", WRAPPERS)
def test_ops_pass_d_state_to_the_backends(monkeypatch, op_name, make, run):
    if not registry.is_available(op_name, "cpu", "cpu"):
        pytest.skip("needs the C++ CPU kernels")
    asked = []

    def unsupported(*, d_state):
        asked.append(d_state)
        return f"d_state {d_state} is above 2" if d_state > 2 else None

    monkeypatch.setattr(registry.ops()[op_name].implementation("cpu"), "unsupported", unsupported, raising=False)
    inputs = make(3)
    with dhkd_kernels.use_backend("reference"):
        expected = run(*inputs)
    torch.testing.assert_close(run(*inputs), expected, rtol=0, atol=0)  # cpu declined: the reference ran
    assert asked == [3]
    with dhkd_kernels.use_backend("cpu"):
        with pytest.raises(ValueError, match="cannot run these inputs: d_state 3 is above 2"):
            run(*inputs)


@pytest.mark.parametrize("op_name, limit_name, make, run", [
    ("ss2d_scan", "SS2D_MAX_STATE", _ss2d_inputs, dhkd_kernels.ss2d_scan),
    ("selective_scan", "SELECTIVE_SCAN_MAX_STATE", _selective_scan_inputs, dhkd_kernels.selective_scan),
])
def test_cuda_d_state_limit_reaches_the_choice(monkeypatch, op_name, limit_name, make, run):
    """The op passes d_state to the CUDA backend's limit: with the CUDA backend made to look available for CPU
    tensors, d_state above its compiled maximum falls through to the next backend, and a request of it is a
    clear error. (On a GPU this is the automatic fall back from cuda to triton.)"""
    ext = registry.extension("_cuda")
    op = registry.ops()[op_name]
    if ext is None or not hasattr(ext, limit_name) or not registry.is_available(op_name, "cpu", "cpu"):
        pytest.skip(f"needs the C++ CPU kernels and a _cuda module that binds {limit_name}")
    limit = getattr(ext, limit_name)
    monkeypatch.setitem(op.available, "cuda", lambda device_type: True)
    monkeypatch.setitem(op.preference, "cpu", ["cuda", "cpu", "reference"])
    assert op.backend_for(torch.zeros(1), d_state=limit) == "cuda"
    inputs = make(limit + 1)
    with dhkd_kernels.use_backend("cpu"):
        expected = run(*inputs)
    torch.testing.assert_close(run(*inputs), expected)  # the cpu kernel ran (cuda would reject CPU tensors)
    with dhkd_kernels.use_backend("cuda"), pytest.raises(
            ValueError, match=rf"requested for {op_name} but cannot run these inputs: .*CUDA kernels support "
                              rf"d_state up to {limit}, got {limit + 1} \(backends that can: \['reference', 'cpu'"):
        run(*inputs)


def test_float64_runs_the_reference_whatever_the_request():
    op = registry.ops()["scmm_modulate"]
    x64, x32 = torch.zeros(1, dtype=torch.float64), torch.zeros(1)
    assert op.backend_for(x64) == "reference"
    assert op.backend_for(x32) == registry.choose("scmm_modulate", x32.device)
    if registry.is_available("scmm_modulate", "cpu", "cpu"):
        with dhkd_kernels.use_backend("cpu"):
            assert op.backend_for(x64) == "reference" and op.backend_for(x32) == "cpu"
    assert registry.extension("_nonexistent") is None
    assert registry.extension_error("_nonexistent") == "not built"
