"""pytest-benchmark micro-benchmarks of the kernels at DHKD shapes, each backend beside the reference.

    pytest benchmarks/test_micro.py --benchmark-enable --benchmark-group-by=group

(The project's pytest configuration disables benchmarking by default, so in a plain test run each case
executes once as a smoke test.) The tables of benchmarks/kernels.py add floors, bytes and memory.
"""
import pytest
import torch

import dhkd_kernels
from dhkd_kernels import registry

SS2D_SHAPES = [(8, 8), (32, 32), (64, 64)]  # Gnet stages at 256² input (4×4 is launch-overhead only)


def _backends(op: str) -> list[str]:
    return ["reference"] + [b for b in ("cpu",) if registry.is_available(op, b, "cpu")]


def _ss2d_inputs(H, W, D=128, N=16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, H, W, D, generator=g), torch.randn(1, H, W, 4, D, generator=g) - 2.0,
            -torch.exp(torch.randn(4, D, N, generator=g) * 0.5), torch.randn(1, H, W, 4, N, generator=g),
            torch.randn(1, H, W, 4, N, generator=g), torch.ones(4, D), torch.zeros(4, D))


@pytest.mark.parametrize("backend", _backends("ss2d_scan"))
@pytest.mark.parametrize("H,W", SS2D_SHAPES)
def test_ss2d_forward(benchmark, backend, H, W):
    benchmark.group = f"ss2d_scan forward {H}x{W} D=128 N=16"
    args = _ss2d_inputs(H, W)
    with dhkd_kernels.use_backend(backend):
        y = benchmark(dhkd_kernels.ss2d_scan, *args)
    assert y.shape == args[0].shape and torch.isfinite(y).all()


@pytest.mark.parametrize("backend", _backends("scmm_modulate"))
def test_scmm_forward(benchmark, backend):
    benchmark.group = "scmm_modulate forward 384x64x64"
    g = torch.Generator().manual_seed(0)
    C = 384
    x = torch.randn(1, C, 64, 64, generator=g)
    params = [torch.randn(C // 2, 1, 3, 3, generator=g) * 0.1, torch.zeros(C // 2),
              torch.randn(C // 2, 1, 3, 3, generator=g) * 0.1, torch.zeros(C // 2),
              torch.randn(C, C, 1, 1, generator=g) * 0.05, torch.zeros(C),
              torch.randn(C, C, 1, 1, generator=g) * 0.05, torch.zeros(C)]
    with torch.no_grad(), dhkd_kernels.use_backend(backend):
        y = benchmark(dhkd_kernels.scmm_modulate, x, *params)
    assert y.shape == x.shape and torch.isfinite(y).all()
