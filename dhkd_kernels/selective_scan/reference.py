"""Plain-PyTorch reference of the selective scan (Mamba S6): the specification and test oracle of its backends.

It runs the chunked log-depth scan shared with SS2D (:func:`dhkd_kernels.ss2d.reference.scan_chunked`), so its
memory stays O(D·N) per chunk; float64 inputs are computed in float64, everything else in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ss2d.reference import _compute_dtype, _dt, scan_chunked


def _as_sequence(t: torch.Tensor, G: int, Dch: int, bsz: int, L: int, ct: torch.dtype) -> torch.Tensor:
    """B or C in :func:`scan_chunked`'s layout for G channel groups of Dch // G channels.

    Variable (b, G, N, L) -> (b, L, G, N); input-independent (Dch, N) -> an expanded (b, L, G, Dg, N) view.
    """
    if t.dim() == 4:
        return t.to(ct).permute(0, 3, 1, 2)
    N = t.shape[1]
    return t.to(ct).reshape(1, 1, G, Dch // G, N).expand(bsz, L, G, Dch // G, N)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba S6 selective scan; returns ``(out, last_state)``.

    u, delta: (batch, D, L); A: (D, N) real; B, C: (batch, G, N, L) with the D channels split into G equal
    groups (channel d uses group d // (D / G)), or (batch, N, L) (G = 1), or input-independent (D, N);
    D, delta_bias: (D,) or None; z: (batch, D, L) or None.
    dt = softplus(delta + delta_bias) (softplus only if ``delta_softplus``; identity above 20),
    h_t = exp(dt·A)·h_{t-1} + dt·B_t·u_t, y_t = <C_t, h_t> + D·u_t, out = y·silu(z) if z is given else y.
    out has u's dtype; last_state (batch, D, N), the state after the last step, is fp32 (float64 for
    float64 inputs).
    """
    ct = _compute_dtype(u)
    bsz, Dch, L = u.shape
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    variable = [t for t in (B, C) if t.dim() == 4]
    G = variable[0].shape[1] if variable else Dch  # input-independent B and C: one group per channel
    N = A.shape[1]
    uf = u.to(ct)
    dt = _dt(delta.to(ct), None if delta_bias is None else delta_bias.to(ct)[:, None], delta_softplus)
    seq = lambda t: t.transpose(1, 2).reshape(bsz, L, G, Dch // G)  # noqa: E731  (b, D, L) -> (b, L, G, Dg)
    y, h = scan_chunked(seq(uf), seq(dt), A.to(ct).reshape(G, Dch // G, N),
                        _as_sequence(B, G, Dch, bsz, L, ct), _as_sequence(C, G, Dch, bsz, L, ct),
                        return_state=True)
    y = y.reshape(bsz, L, Dch).transpose(1, 2)
    if D is not None:
        y = y + uf * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype), h.reshape(bsz, Dch, N)
