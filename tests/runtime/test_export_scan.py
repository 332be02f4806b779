"""The compact SS2D scan used for export: the reference's result, and a graph whose size does not grow with
the image size."""
import pytest
import torch

from dhkd.models.ss2d import SS2D
from dhkd.runtime.export_scan import export_formulation, linear_scan, ss2d_scan_export
from dhkd_kernels import use_backend
from dhkd_kernels.ss2d.reference import scan_chunked, ss2d_scan_reference


@pytest.mark.parametrize("shape", [(2, 5, 7, 6, 4), (1, 1, 1, 3, 2), (1, 33, 9, 4, 3), (1, 16, 16, 8, 4)])
def test_matches_the_reference(shape):
    b, H, W, D, N = shape
    g = torch.Generator().manual_seed(sum(shape))
    u, delta = torch.randn(b, H, W, D, generator=g), torch.randn(b, H, W, 4, D, generator=g)
    A = -4 * torch.rand(4, D, N, generator=g) - 0.5
    B, C = torch.randn(2, b, H, W, 4, N, generator=g)
    Dk, bias = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)
    want = ss2d_scan_reference(*(t.double() for t in (u, delta, A, B, C, Dk, bias)))
    got = ss2d_scan_export(u, delta, A, B, C, Dk, bias)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    step = delta.abs()  # without softplus the steps must be positive for a decaying (stable) scan
    got_raw = ss2d_scan_export(u, step, A, B, C, out_float=True, delta_softplus=False)
    want_raw = ss2d_scan_reference(*(t.double() for t in (u, step, A, B, C)), delta_softplus=False)
    torch.testing.assert_close(got_raw.double(), want_raw, rtol=1e-5, atol=1e-5)


def test_linear_scan_any_chunk():
    g = torch.Generator().manual_seed(1)
    u, dt = torch.randn(2, 37, 3, 5, generator=g), torch.rand(2, 37, 3, 5, generator=g)
    A, (B, C) = -torch.rand(3, 5, 4, generator=g), torch.randn(2, 2, 37, 3, 4, generator=g)
    want = scan_chunked(u.double(), dt.double(), A.double(), B.double(), C.double())
    for chunk in (1, 4, 16, 64):
        torch.testing.assert_close(linear_scan(u, dt, A, B, C, chunk=chunk).double(), want, rtol=1e-5, atol=1e-5)


def _exported_nodes(block: torch.nn.Module, side: int) -> int:
    x = torch.randn(1, side, side, 16)
    with use_backend("reference"), export_formulation(), torch.no_grad():
        return len(torch.export.export(block, (x,)).graph.nodes)


def test_export_graph_does_not_grow_with_the_image():
    torch.manual_seed(0)
    block = SS2D(16, d_state=4).eval()
    # 16² and 64² positions: 16 and 256 chunks of 16, i.e. 4 and 8 cross-chunk steps; the reference's graph
    # grows 16-fold (one unrolled chunk loop per 64 positions)
    small, large = _exported_nodes(block, 16), _exported_nodes(block, 64)
    assert large - small <= 4 * 13, (small, large)
    with export_formulation():
        from dhkd.models import ss2d
        assert ss2d._scan_fn is ss2d_scan_export
    assert ss2d._scan_fn is ss2d.ss2d_scan  # restored
