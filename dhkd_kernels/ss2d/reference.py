"""Plain-PyTorch reference of the four-direction SS2D scan, and the chunked scan shared with the selective scan.

These functions are the specification and the test oracle of every backend, and the exportable
decomposition used for ONNX. Memory stays O(D·N) per chunk: the sequence is processed in chunks of
``CHUNK`` steps, each scanned with a log-depth (Hillis-Steele) pass that only multiplies decay
factors ≤ 1, and the state is carried to the next chunk; no (L, D, N) tensor is ever built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64
K = 4  # SS2D directions


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def scan_chunked(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 chunk: int = CHUNK, return_state: bool = False):
    """Grouped linear recurrence h_t = exp(dt_t·A)·h_{t-1} + dt_t·u_t·B_t, y_t = Σ_n C_t·h_t.

    u, dt: (batch, L, G, Dg); A: (G, Dg, N); B, C: (batch, L, G, N) shared by a group's channels, or
    (batch, L, G, Dg, N) per channel (e.g. an expanded view). Returns y (batch, L, G, Dg), and the state
    after the last step (batch, G, Dg, N) too if ``return_state``.
    """
    per_channel = lambda t: t.unsqueeze(3) if t.dim() == 4 else t  # noqa: E731
    bsz, L, G, Dg = u.shape
    N = A.shape[-1]
    h = u.new_zeros(bsz, G, Dg, N)
    ys = []
    for s in range(0, L, chunk):
        dtc, uc = dt[:, s:s + chunk], u[:, s:s + chunk]
        Bc, Cc = B[:, s:s + chunk], C[:, s:s + chunk]
        a = torch.exp(dtc.unsqueeze(-1) * A)  # (b, T, G, Dg, N)
        x = (dtc * uc).unsqueeze(-1) * per_channel(Bc)  # (b, T, G, Dg, N)
        T = a.shape[1]
        off = 1
        while off < T:  # inclusive scan of the pairs (a, x) under (a1, x1)∘(a2, x2) = (a1·a2, a2·x1 + x2)
            x = torch.cat([x[:, :off], a[:, off:] * x[:, :-off] + x[:, off:]], dim=1)
            a = torch.cat([a[:, :off], a[:, off:] * a[:, :-off]], dim=1)
            off *= 2
        hs = a * h.unsqueeze(1) + x
        h = hs[:, -1]
        ys.append((hs * per_channel(Cc)).sum(-1))
    y = torch.cat(ys, dim=1)
    return (y, h) if return_state else y


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias
    return F.softplus(delta) if delta_softplus else delta  # softplus: identity above 20, as the kernels


def to_sequence(x: torch.Tensor, k: int) -> torch.Tensor:
    """(batch, H, W, ...) -> (batch, L, ...) in direction k's scan order.

    k = 0 row-major, 1 column-major, 2 reversed row-major, 3 reversed column-major.
    """
    bsz, H, W = x.shape[:3]
    seq = (x if k % 2 == 0 else x.transpose(1, 2)).reshape(bsz, H * W, *x.shape[3:])
    return seq.flip(1) if k >= 2 else seq


def from_sequence(seq: torch.Tensor, k: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`to_sequence`: (batch, L, ...) in direction k's order -> (batch, H, W, ...)."""
    if k >= 2:
        seq = seq.flip(1)
    bsz = seq.shape[0]
    if k % 2 == 0:
        return seq.reshape(bsz, H, W, *seq.shape[2:])
    return seq.reshape(bsz, W, H, *seq.shape[2:]).transpose(1, 2)


def ss2d_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out_float=False):
    """Cross-scan -> four selective scans -> cross-merge (sum), channels-last.

    u: (batch, H, W, D); delta: (batch, H, W, 4, D); A: (4, D, N) fp32; B, C: (batch, H, W, 4, N);
    D, delta_bias: (4, D) fp32 or None. Direction k's B, C and delta are used only by direction k.
    Returns y (batch, H, W, D) in fp32 if ``out_float`` else in u's dtype.
    """
    ct = _compute_dtype(u)
    bsz, H, W, Dch = u.shape
    uf = u.to(ct)
    dt = _dt(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    u_seq = torch.stack([to_sequence(uf, k) for k in range(K)], dim=2)  # (b, L, 4, D)
    dt_seq = torch.stack([to_sequence(dt[:, :, :, k], k) for k in range(K)], dim=2)
    B_seq = torch.stack([to_sequence(B[:, :, :, k].to(ct), k) for k in range(K)], dim=2)  # (b, L, 4, N)
    C_seq = torch.stack([to_sequence(C[:, :, :, k].to(ct), k) for k in range(K)], dim=2)
    y_seq = scan_chunked(u_seq, dt_seq, A.to(ct), B_seq, C_seq)
    if D is not None:
        y_seq = y_seq + u_seq * D.to(ct)
    y = sum(from_sequence(y_seq[:, :, k], k, H, W) for k in range(K))
    return y if out_float else y.to(u.dtype)
