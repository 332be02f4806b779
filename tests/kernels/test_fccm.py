"""FCCM: every available backend against the plain-PyTorch reference, forward and backward."""
from __future__ import annotations

import functools

import pytest
import torch

import dhkd_kernels as dk
import kernel_checks
from kernel_checks import assert_close_all
from dhkd_kernels import registry
from dhkd_kernels.fccm import fccm_bias_gelu, fccm_pool_relu, ops, reference

CPU_BACKENDS = [b for b in ("cpu", "triton") if registry.is_available(ops.OP, b, "cpu")]
GPU = torch.cuda.is_available()
# (batch, channels, hidden, H, W): odd sizes where the floor-mode pooling drops a row/column
SHAPES = [(2, 5, 6, 9, 7), (1, 3, 4, 4, 4), (3, 4, 10, 8, 6), (1, 17, 9, 13, 11)]


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # a non-contiguous view: every other row of a taller tensor
        tall = torch.zeros(*t.shape[:2], 2 * t.shape[2], t.shape[3], dtype=t.dtype, device=t.device)
        tall[:, :, ::2] = t
        return tall[:, :, ::2]
    return t.contiguous()


def make_inputs(B, C, hidden, H, W, dtype=torch.float32, device="cpu", kind="nchw", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    return [layout(r(B, C, H, W), kind), r(C, C, 4, 4, scale=0.25 / C ** 0.5), r(C, scale=0.1),
            r(hidden, C, 3, 3, scale=1 / (3 * C ** 0.5)), r(hidden, scale=0.1), r(C, hidden, 1, 1, scale=hidden ** -0.5),
            r(C, scale=0.1)]


run = functools.partial(kernel_checks.run, fn=dk.fccm_forward)  # run(backend, inputs, fn=...) -> (out, grads)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["nchw", "channels_last", "strided"])
def test_fp32_matches_reference(backend, shape, kind):
    inputs = make_inputs(*shape, kind=kind)
    assert_close_all(run(backend, inputs), run("reference", inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter not available")
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_triton_interpreter_matches_reference(kind):
    inputs = make_inputs(2, 5, 6, 9, 7, kind=kind)
    assert_close_all(run("triton", inputs), run("reference", inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend,kind", [(b, "nchw") for b in CPU_BACKENDS]
                         + [("cpu", "channels_last")] * ("cpu" in CPU_BACKENDS))
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_half_precision_close_to_fp32_reference(backend, kind, dtype, tol):
    inputs = make_inputs(2, 5, 6, 9, 7, dtype=dtype, kind=kind)
    got = run(backend, inputs)
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1])
    assert_close_all(got, run("reference", [t.float() for t in inputs]), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_pool_relu_ties_and_odd_sizes(backend, kind):
    # integer-valued z: most 2×2 windows hold equal maxima; the gradient goes to the first, as in PyTorch
    z = layout(torch.randint(-2, 3, (2, 19, 7, 5), generator=torch.Generator().manual_seed(2)).float(), kind)
    bias = torch.linspace(-1.0, 1.0, 19)
    assert_close_all(run(backend, [z, bias], fn=fccm_pool_relu),
                     run("reference", [z, bias], fn=fccm_pool_relu), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_pool_relu_propagates_nan(backend, kind):
    z = torch.randn(1, 18, 4, 6, generator=torch.Generator().manual_seed(3))
    z[0, 0, 0, 1] = z[0, 17, 3, 3] = z[0, 5, 2, 4] = float("nan")  # different window positions and channels
    z = layout(z, kind)
    bias = torch.zeros(18)
    with dk.use_backend(backend):
        got = fccm_pool_relu(z, bias)
    want = reference.pool_relu_reference(z, bias)
    assert torch.equal(got.isnan(), want.isnan()) and int(want.isnan().sum()) == 3
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), atol=0, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bias_gelu_matches_reference(backend):
    g = torch.Generator().manual_seed(5)
    h, bias = torch.randn(2, 5, 3, 4, generator=g) * 3, torch.randn(5, generator=g)
    assert_close_all(run(backend, [h, bias], fn=fccm_bias_gelu),
                     run("reference", [h, bias], fn=fccm_bias_gelu), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_mixer_ablation(backend):
    inputs = make_inputs(2, 4, 6, 8, 8)[:3]
    got = run(backend, inputs)
    assert got[0].shape == (2, 4, 2, 2)
    assert_close_all(got, run("reference", inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    g = torch.Generator().manual_seed(6)
    for kind in ("nchw", "channels_last"):
        z = layout(torch.randn(2, 3, 6, 5, generator=g), kind).requires_grad_(True)
        bias = torch.randn(3, generator=g).requires_grad_(True)
        torch.library.opcheck(ops._pool_relu_op, (z, bias, backend))
        torch.library.opcheck(ops._bias_gelu_op, (z, bias, backend))


def test_float64_runs_the_reference():
    inputs = make_inputs(1, 3, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(dk.fccm_forward(*inputs), reference.fccm_reference(*inputs))


def test_bad_inputs_raise_clear_errors():
    x, dw, db, w1, b1, w2, b2 = make_inputs(1, 4, 6, 8, 8)
    with pytest.raises(ValueError, match="at least 4x4"):
        dk.fccm_forward(x[..., :3, :3], dw, db, w1, b1, w2, b2)
    with pytest.raises(ValueError, match="down_weight must have shape"):
        dk.fccm_forward(x, dw[..., :3, :3], db, w1, b1, w2, b2)
    with pytest.raises(ValueError, match="mix1_weight must have shape"):
        dk.fccm_forward(x, dw, db, w1[:, :3], b1, w2, b2)
    with pytest.raises(ValueError, match="all four mix"):
        dk.fccm_forward(x, dw, db, w1, b1, None, None)
    with pytest.raises(TypeError, match="down_bias must have dtype"):
        dk.fccm_forward(x, dw, db.half(), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="bias must have shape"):
        fccm_bias_gelu(x, db[:2])
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        with dk.use_backend("cuda"):
            dk.fccm_forward(x, dw, db, w1, b1, w2, b2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(2, 5, 6, 9, 7), (2, 384, 768, 64, 64)])
@pytest.mark.parametrize("kind", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_gpu_matches_reference(backend, shape, kind, dtype, tol):
    if not registry.is_available(ops.OP, backend, "cuda"):
        pytest.skip(f"{backend} not built/available")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs = make_inputs(*shape, dtype=dtype, device="cuda", kind=kind)
    assert_close_all(run(backend, inputs), run("reference", [t.float() for t in inputs]), atol=tol, rtol=tol)
