"""Baseline for the fused SS2D scan on a GPU: cross-scan, selective scan and cross-merge as separate operations.

This is how the public VMamba pipeline runs an SS2D call (a cross-scan kernel writes the four direction
sequences of u, a selective-scan kernel writes four fp32 outputs, a cross-merge kernel sums them back into
pixel order). Here the cross-scan and the merge are PyTorch copies/additions and the scan is a Triton kernel
built from the same chunked associative-scan pieces as the fused Triton backend, one program per
(sequence, channel tile), so the comparison isolates what the fusion saves: u read once instead of copied
4×, no (4, L, D) fp32 intermediate, and the merge folded into the scan. delta, B and C are taken as already
in sequence order (VMamba's projections produce them on the cross-scanned sequences). Benchmark-only code.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dhkd_kernels.ss2d import reference
from dhkd_kernels.triton_scan import LOG2E, chunk_states, dt_softplus, launch_options, tile_blocks, tile_row

K = 4  # directions


@triton.jit
def _scan_sequences_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, bias_ptr, y_ptr, L, D, N,
                           BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """y_s = selective scan of sequence s = batch·4 + direction: u, delta (S, L, D), B, C (S, L, N)."""
    s = tl.program_id(0).to(tl.int64)
    k = s % 4
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_T)
    d_ok = offs_d < D
    n_ok = offs_n < N
    m_dn = d_ok[:, None] & n_ok[None, :]
    a2 = tl.load(a_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0) * LOG2E
    bias = tl.load(bias_ptr + k * D + offs_d, mask=d_ok, other=0.0)
    dskip = tl.load(dskip_ptr + k * D + offs_d, mask=d_ok, other=0.0)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(tl.cdiv(L, BLOCK_T)):
        t = c * BLOCK_T + rows
        row_ok = t < L
        m_td = row_ok[:, None] & d_ok[None, :]
        m_tn = row_ok[:, None] & n_ok[None, :]
        td = (s * L + t[:, None]) * D + offs_d[None, :]
        tn = (s * L + t[:, None]) * N + offs_n[None, :]
        u = tl.load(u_ptr + td, mask=m_td, other=0.0).to(tl.float32)
        z = tl.load(delta_ptr + td, mask=m_td, other=0.0).to(tl.float32) + bias[None, :]
        dt = tl.where(m_td, dt_softplus(z), 0.0)
        bm = tl.load(b_ptr + tn, mask=m_tn, other=0.0).to(tl.float32)
        cm = tl.load(c_ptr + tn, mask=m_tn, other=0.0).to(tl.float32)
        _, _, hs = chunk_states(h, dt, u, bm, a2, True)
        h = tile_row(hs, rows, BLOCK_T - 1)
        y = tl.sum(hs * cm[:, None, :], axis=2) + u * dskip[None, :]
        tl.store(y_ptr + td, y, mask=m_td)


def _sequences(x: torch.Tensor, per_direction: bool) -> torch.Tensor:
    """(b, H, W, [4,] C) -> (b, 4, L, C) contiguous, direction k in its scan order."""
    parts = [reference.to_sequence(x[:, :, :, k] if per_direction else x, k) for k in range(K)]
    return torch.stack(parts, dim=1).contiguous()


def prepare(u, delta, A, B, C, Dw, bias):
    """The inputs of :func:`separate_ops`: delta, B and C already in sequence order (not timed)."""
    return (u, _sequences(delta, True), A.float().contiguous(), _sequences(B, True), _sequences(C, True),
            Dw.float().contiguous(), bias.float().contiguous())


def separate_ops(u, delta_seq, A, B_seq, C_seq, Dw, bias):
    """Cross-scan u → selective scan of the 4·batch sequences (fp32 out) → cross-merge; (b, H, W, D) fp32."""
    bsz, H, W, Dch = u.shape
    L, N = H * W, A.shape[-1]
    u_seq = _sequences(u, False)  # cross-scan: u copied into four direction sequences
    y_seq = torch.empty((bsz, K, L, Dch), dtype=torch.float32, device=u.device)
    block_t, block_d, block_n = tile_blocks(L, Dch, N)
    _scan_sequences_kernel[(bsz * K, triton.cdiv(Dch, block_d))](
        u_seq, delta_seq, A, B_seq, C_seq, Dw, bias, y_seq, L, Dch, N,
        BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_N=block_n, **launch_options())
    return sum(reference.from_sequence(y_seq[:, k], k, H, W) for k in range(K))  # cross-merge
