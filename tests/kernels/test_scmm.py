"""SCMM modulation: every available backend against the plain-PyTorch reference, forward and backward."""
from __future__ import annotations

import functools

import pytest
import torch

import dhkd_kernels as dk
import kernel_checks
from kernel_checks import assert_close_all
from dhkd_kernels import registry
from dhkd_kernels.scmm import gate_residual, ops, reference, two_scale_depthwise

CPU_BACKENDS = [b for b in ("cpu", "triton") if registry.is_available(ops.OP, b, "cpu")]
GPU = torch.cuda.is_available()
# odd sizes where the adaptive windows overlap, batch > 1, channels not a multiple of a vector width
SHAPES = [(2, 6, 7, 9), (3, 10, 5, 4), (1, 34, 8, 6), (2, 2, 2, 3), (1, 4, 3, 3)]
TRITON_SHAPES = [(2, 6, 7, 5), (1, 4, 4, 4)]


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # a non-contiguous view: every other column of a wider tensor
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def make_inputs(B, C, H, W, dtype=torch.float32, device="cpu", kind="nchw", seed=0, x=None):
    g = torch.Generator().manual_seed(seed)
    half = C // 2

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    if x is None:
        x = r(B, C, H, W)
    params = [r(half, 1, 3, 3, scale=0.3), r(half, scale=0.1), r(half, 1, 3, 3, scale=0.3), r(half, scale=0.1),
              r(C, C, 1, 1, scale=C ** -0.5), r(C, scale=0.1), r(C, C, 1, 1, scale=C ** -0.5), r(C, scale=0.1)]
    return [layout(x.to(dtype=dtype, device=device), kind)] + params


run = functools.partial(kernel_checks.run, fn=dk.scmm_modulate)  # run(backend, inputs, fn=...) -> (out, grads)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["nchw", "channels_last", "strided"])
def test_fp32_matches_reference(backend, shape, kind):
    inputs = make_inputs(*shape, kind=kind)
    assert_close_all(run(backend, inputs), run("reference", inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter not available")
@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_triton_interpreter_matches_reference(shape, kind):
    inputs = make_inputs(*shape, kind=kind)
    assert_close_all(run("triton", inputs), run("reference", inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend,kind", [(b, "nchw") for b in CPU_BACKENDS]
                         + [("cpu", "channels_last")] * ("cpu" in CPU_BACKENDS))
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_half_precision_close_to_fp32_reference(backend, kind, dtype, tol):
    inputs = make_inputs(2, 6, 7, 5, dtype=dtype, kind=kind)
    got = run(backend, inputs)
    want = run("reference", [t.float() for t in inputs])
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1])
    assert_close_all(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("H,W", [(7, 6), (8, 6)])  # overlapping adaptive windows, and plain 2×2 windows
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_max_pool_ties_route_gradient_like_pytorch(backend, H, W, kind):
    # integer-valued input: most pooling windows hold several equal maxima (first one in scan order wins)
    B, C = 2, 4
    x = torch.randint(0, 3, (B, C, H, W), generator=torch.Generator().manual_seed(3)).float()
    inputs = make_inputs(B, C, H, W, x=x, kind=kind)
    got = run(backend, inputs[:5], fn=two_scale_depthwise)
    want = run("reference", inputs[:5], fn=two_scale_depthwise)
    assert_close_all(got, want, atol=1e-5, rtol=1e-5)


# channels_last two-scale branch alone (the dense NHWC kernels): odd sizes with overlapping or rounded pool
# windows, the smallest sizes, batch > 1, channel halves below, at and past one 16-lane block and one
# 64-channel work-item group (a full group next to a partial one)
NHWC_SHAPES = [(2, 6, 7, 9), (3, 10, 5, 4), (2, 64, 7, 5), (2, 36, 9, 11), (2, 4, 2, 2), (1, 6, 3, 5), (2, 32, 3, 5),
               (2, 140, 5, 7)]


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="compiled CPU kernels not built")
@pytest.mark.parametrize("shape", NHWC_SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_two_scale_channels_last_matches_reference(shape, dtype, tol):
    inputs = make_inputs(*shape, dtype=dtype, kind="channels_last")[:5]
    got = run("cpu", inputs, fn=two_scale_depthwise)
    want = run("reference", [t.float() for t in inputs], fn=two_scale_depthwise)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert got[1][0].is_contiguous(memory_format=torch.channels_last)
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1])
    assert_close_all(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gate_residual_matches_reference(backend):
    g = torch.Generator().manual_seed(4)
    G, x = torch.randn(2, 6, 5, 3, generator=g), torch.randn(2, 6, 5, 3, generator=g)
    got = run(backend, [G, x], fn=gate_residual)
    want = run("reference", [G, x], fn=gate_residual)
    assert_close_all(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    x, wa, ba, wb, bb = make_inputs(2, 4, 5, 6)[:5]
    for t in (x, wa, ba, wb, bb):
        t.requires_grad_(True)
    torch.library.opcheck(ops._two_scale_op, (x, wa, ba, wb, bb, backend))
    G = torch.randn_like(x).requires_grad_(True)
    torch.library.opcheck(ops._gate_op, (G, x, backend))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(ops._gate_op, (G.detach().clone().requires_grad_(True), xc, backend))


def test_default_backend_on_cpu_is_the_compiled_one():
    if "cpu" in CPU_BACKENDS:
        assert registry.choose(ops.OP, torch.device("cpu")) == "cpu"


def test_float64_runs_the_reference():
    inputs = make_inputs(1, 4, 5, 5, dtype=torch.float64)
    with dk.use_backend(CPU_BACKENDS[0] if CPU_BACKENDS else "reference"):
        out = dk.scmm_modulate(*inputs)
    torch.testing.assert_close(out, reference.scmm_modulate_reference(*inputs))


def test_bad_inputs_raise_clear_errors():
    inputs = make_inputs(1, 4, 5, 5)
    with pytest.raises(ValueError, match="even channel count"):
        dk.scmm_modulate(torch.randn(1, 5, 5, 5), *inputs[1:])
    with pytest.raises(ValueError, match="H, W >= 2"):
        dk.scmm_modulate(torch.randn(1, 4, 1, 5), *inputs[1:])
    with pytest.raises(ValueError, match="dw_b_weight must have shape"):
        dk.scmm_modulate(inputs[0], inputs[1], inputs[2], torch.randn(2, 1, 5, 5), *inputs[4:])
    with pytest.raises(TypeError, match="aggr_weight must have dtype"):
        dk.scmm_modulate(*inputs[:5], inputs[5].double(), *inputs[6:])
    with pytest.raises(TypeError, match="x must have dtype"):
        dk.scmm_modulate(inputs[0].int(), *inputs[1:])
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        with dk.use_backend("cuda"):
            dk.scmm_modulate(*inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (2, 384, 64, 64), (1, 34, 33, 31)])
@pytest.mark.parametrize("kind", ["nchw", "channels_last", "strided"])
def test_gpu_matches_reference(backend, shape, kind):
    if not registry.is_available(ops.OP, backend, "cuda"):
        pytest.skip(f"{backend} not built/available")
    inputs = make_inputs(*shape, device="cuda", kind=kind)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    assert_close_all(run(backend, inputs), run("reference", inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_gpu_half_precision(backend, dtype, tol):
    if not registry.is_available(ops.OP, backend, "cuda"):
        pytest.skip(f"{backend} not built/available")
    inputs = make_inputs(2, 6, 7, 9, dtype=dtype, device="cuda")
    assert_close_all(run(backend, inputs), run("reference", [t.float() for t in inputs]), atol=tol, rtol=tol)
