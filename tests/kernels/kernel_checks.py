"""Helpers shared by the kernel tests: run an op with all its gradients, compare two such runs, gradcheck an op
in fp32, compile Triton kernels for a GPU outside the interpreter, build CUDA kernels on the host emulation,
mark the GPU tests of the compiled CUDA kernels."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dhkd_kernels as dk
from dhkd_kernels import _ext
from dhkd_kernels.scmm.ops import dense_format

ROOT = Path(__file__).resolve().parents[2]
HOST_DIR = Path(__file__).resolve().parent / "cuda_host"  # host emulation of CUDA threads, barriers, shuffles


def cuda_kernel_test(symbol: str, what: str):
    """Decorator of a GPU test of the compiled CUDA kernels: the ``gpu`` marker (``pytest -m gpu`` selects it,
    and the root conftest skips it without a GPU) and a skip, naming ``what``, where ``dhkd_kernels._cuda`` was
    not built or does not bind ``symbol``."""
    skip = pytest.mark.skipif(not (torch.cuda.is_available() and _ext.has("_cuda", symbol)),
                              reason=f"needs a CUDA GPU and {what}")
    return lambda test: pytest.mark.gpu(skip(test))


def run(backend, inputs, fn):
    """(output, gradients of every input) of ``fn(*inputs)`` on ``backend``, for a seeded output gradient laid
    out like the output (channels_last outputs get channels_last gradients)."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]  # same storage and strides as the inputs
    with dk.use_backend(backend):
        out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    g = g.contiguous(memory_format=dense_format(out))
    return out.detach(), torch.autograd.grad(out, leaves, g)


def assert_close_all(got, want, atol, rtol):
    """Outputs within atol/rtol; each gradient within atol scaled by its reference's largest magnitude."""
    torch.testing.assert_close(got[0].float(), want[0].float(), atol=atol, rtol=rtol)
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        scale = max(1.0, b.float().abs().max().item())
        torch.testing.assert_close(a.float(), b.float(), atol=atol * scale, rtol=rtol, msg=lambda m: f"grad {i}: {m}")


def gradcheck_fp32(op, inputs, backend: str, **kwargs) -> bool:
    """Finite differences in fp32 (loose tolerances) of ``op(*inputs, **kwargs)`` on ``backend``, through the
    public op and its registered autograd; every input becomes a leaf requiring grad."""
    leaves = tuple(t.requires_grad_() for t in inputs)

    def f(*args):
        with dk.use_backend(backend):
            return op(*args, **kwargs)

    return torch.autograd.gradcheck(f, leaves, eps=1e-2, atol=5e-3, rtol=5e-3, fast_mode=False, nondet_tol=1e-6)


def assert_compiles_outside_interpreter(script: str, cache_dir) -> None:
    """Runs ``script`` (kernels built with ``triton.compile``, then "compiled" printed) in a fresh Python without
    TRITON_INTERPRET, with its Triton cache in ``cache_dir``, and asserts that it succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def build_host_emulation(cxx: str, harness: Path, out: Path, lib_name: str, timeout: int) -> ctypes.CDLL:
    """Compiles ``harness`` (which includes a CUDA kernel source rewritten for the host emulation in ``out``) with
    C++20 into ``out / lib_name`` and loads it; skips the test where the compiler has no C++20 <barrier>."""
    lib = out / lib_name
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-x", "c++", f"-I{HOST_DIR}", f"-I{out}",
           f"-I{ROOT / 'csrc'}", str(harness), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 and "barrier" in res.stderr and "No such file" in res.stderr:
        pytest.skip("the C++ compiler has no C++20 <barrier>")
    assert res.returncode == 0, res.stderr[-4000:]
    return ctypes.CDLL(str(lib))
