"""A compact formulation of the SS2D scan for export: its traced graph has a fixed number of nodes whatever
the image size.

The plain-PyTorch reference scans the sequence chunk after chunk with a Python loop, which export unrolls: the
graph grows with H·W (tens of thousands of ONNX nodes for the ``paper`` preset, and an optimiser that does not
finish). Here the linear recurrence h_t = a_t·h_{t−1} + x_t (a_t = exp(Δ_t·A) ≤ 1, x_t = Δ_t·u_t·B_t) is
solved for all positions at once in two log-depth levels:

1. within chunks of ``CHUNK`` steps, all chunks together: an inclusive (Hillis-Steele) scan of the pairs
   (a, x) under (a₁, x₁)∘(a₂, x₂) = (a₁·a₂, a₂·x₁ + x₂) — log₂(CHUNK) steps;
2. across chunks: the same scan of each chunk's total (a, x) — log₂(L/CHUNK) steps — which gives the state
   entering every chunk, h_in; then h_t = a_t·h_in + x_t inside the chunk.

Only decay factors ≤ 1 are multiplied, as in the reference, so it is as accurate (fp32 throughout); the cost is
memory: the (L, 4, D, N) states of one image are held at once (about 134 MB per tensor for the ``paper``
preset's 64×64 stage), where the reference holds one chunk.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from dhkd_kernels.ss2d.reference import from_sequence, to_sequence

CHUNK = 16
K = 4  # SS2D directions


def _inclusive_scan(a: torch.Tensor, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hillis-Steele inclusive scan of (a, x) along ``dim`` (static length): log₂(length) steps."""
    n = a.shape[dim]
    off = 1
    while off < n:
        a_head, a_prev, a_tail = a.narrow(dim, 0, off), a.narrow(dim, 0, n - off), a.narrow(dim, off, n - off)
        x_head, x_prev, x_tail = x.narrow(dim, 0, off), x.narrow(dim, 0, n - off), x.narrow(dim, off, n - off)
        x = torch.cat([x_head, a_tail * x_prev + x_tail], dim=dim)
        a = torch.cat([a_head, a_tail * a_prev], dim=dim)
        off *= 2
    return a, x


def linear_scan(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk: int = CHUNK) -> torch.Tensor:
    """y_t = Σ_n C_t·h_t with h_t = exp(dt_t·A)·h_{t−1} + dt_t·u_t·B_t, h_0 = 0, for all t at once.

    u, dt: (batch, L, G, Dg); A: (G, Dg, N); B, C: (batch, L, G, N). Returns y (batch, L, G, Dg).
    """
    bsz, L, G, Dg = u.shape
    pad = (-L) % chunk
    if pad:  # padded steps come last (dt = 0: decay 1, input 0) and are dropped from y
        u, dt, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (u, dt, B, C))
    n = (L + pad) // chunk
    N = A.shape[-1]
    a = torch.exp(dt.unsqueeze(-1) * A).reshape(bsz, n, chunk, G, Dg, N)
    x = ((dt * u).unsqueeze(-1) * B.unsqueeze(3)).reshape(bsz, n, chunk, G, Dg, N)
    a, x = _inclusive_scan(a, x, dim=2)                           # within each chunk
    _, h_end = _inclusive_scan(a[:, :, -1], x[:, :, -1], dim=1)  # state at the end of each chunk
    h_in = torch.cat([torch.zeros_like(h_end[:, :1]), h_end[:, :-1]], dim=1)  # state entering each chunk
    h = a * h_in.unsqueeze(2) + x
    y = (h * C.reshape(bsz, n, chunk, G, 1, N)).sum(-1).reshape(bsz, n * chunk, G, Dg)
    return y[:, :L]


def ss2d_scan_export(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                     delta_softplus: bool = True, out_float: bool = False) -> torch.Tensor:
    """The SS2D scan of ``dhkd_kernels.ss2d_scan`` (same arguments and result: cross-scan in four directions,
    selective scans, cross-merge by summation; channels-last), computed with :func:`linear_scan`."""
    bsz, H, W, Dch = u.shape
    uf = u.float()
    dt = delta.float() + (delta_bias.float() if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = F.softplus(dt)
    seq = lambda t: torch.stack([to_sequence(t[:, :, :, k], k) for k in range(K)], dim=2)  # noqa: E731
    u_seq = torch.stack([to_sequence(uf, k) for k in range(K)], dim=2)  # (b, L, 4, D)
    y_seq = linear_scan(u_seq, seq(dt), A.float(), seq(B.float()), seq(C.float()))
    if D is not None:
        y_seq = y_seq + u_seq * D.float()
    y = sum(from_sequence(y_seq[:, :, k], k, H, W) for k in range(K))
    return y if out_float else y.to(u.dtype)


def export_formulation() -> contextlib.AbstractContextManager:
    """Inside the block, the model's SS2D blocks (:mod:`dhkd.models.ss2d`) scan with :func:`ss2d_scan_export`
    instead of ``dhkd_kernels.ss2d_scan``; used while tracing a detector for export."""
    from dhkd.models.ss2d import scan_with

    return scan_with(ss2d_scan_export)

