"""SS2D (four-direction 2D selective scan block) and the HSTM block built on it (docs/method.md)."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dhkd_kernels import ss2d_scan

K = 4  # scan directions

# The scan function SS2D blocks call: ``dhkd_kernels.ss2d_scan`` unless a caller swaps in another formulation
# with the same signature for a block of code (export does: see :func:`scan_with`).
_scan_fn: Callable[..., torch.Tensor] = ss2d_scan


@contextlib.contextmanager
def scan_with(fn: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Inside the block, every SS2D block scans with ``fn`` instead of ``dhkd_kernels.ss2d_scan``; ``fn``
    takes the same arguments and returns the same tensor. Process-wide: meant for tracing (export), not for
    concurrent inference threads."""
    global _scan_fn
    previous, _scan_fn = _scan_fn, fn
    try:
        yield
    finally:
        _scan_fn = previous


class SS2D(nn.Module):
    """VMamba-v0 style SS2D on channels-last input (b, H, W, d_model).

    in_proj → (x, z); x → depth-wise 3×3 + SiLU → per-pixel x_proj (dt_low, B, C per direction) →
    dt_proj → fused four-direction selective scan (``dhkd_kernels.ss2d_scan``) → LayerNorm → ·SiLU(z) →
    out_proj. The per-direction projections are applied in pixel order, which equals applying them to the
    cross-scanned sequences, so nothing is ever copied four times.
    """

    def __init__(self, d_model: int = 64, d_state: int = 16, ssm_ratio: float = 2.0,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        super().__init__()
        self.d_inner = d_inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=True)
        bound = d_inner ** -0.5
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank).uniform_(-dt_rank ** -0.5,
                                                                                      dt_rank ** -0.5))
        dt = torch.exp(torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(K, d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(K, d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The SS2D block on a channels-last map (b, H, W, d_model)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)                                # (b, H, W, d_inner) each
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        b, H, W, _ = x.shape
        # all four directions' projections as one GEMM each (per-pixel, so the scan order does not matter)
        x_dbl = (x @ self.x_proj_weight.reshape(-1, self.d_inner).T).view(b, H, W, K, -1)  # (b, H, W, K, R + 2N)
        dt_low, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_weight = torch.block_diag(*self.dt_projs_weight.transpose(1, 2))  # (K·R, K·d_inner), block k = W_kᵀ
        delta = (dt_low.reshape(-1, K * self.dt_rank) @ dt_weight).view(b, H, W, K, self.d_inner)
        A = -torch.exp(self.A_logs.float())
        io = x.dtype  # one I/O dtype for the scan (under autocast the projections may differ); fp32 inside
        y = _scan_fn(x.contiguous(), delta.to(io).contiguous(), A, B.to(io).contiguous(), C.to(io).contiguous(),
                      self.Ds.float(), self.dt_projs_bias.float(), delta_softplus=True, out_float=True)
        y = self.out_norm(y.to(x.dtype)) * F.silu(z)
        return self.out_proj(y)


class HSTM(nn.Module):
    """Hybrid self-task Mamba block: channels split in halves; a Mamba branch (patch expand Linear c/2→c,
    Linear c→c/2, x + SS2D(LayerNorm(x))) and a full 3×3 conv branch; concatenated (Mamba first) → ReLU."""

    def __init__(self, channels: int = 128, d_state: int = 16, ssm_ratio: float = 2.0):
        super().__init__()
        half = channels // 2
        self.expand = nn.Linear(half, 2 * half, bias=False)  # "patch expand" that keeps the resolution
        self.reduce = nn.Linear(2 * half, half)
        self.norm = nn.LayerNorm(half)
        self.ss2d = SS2D(half, d_state, ssm_ratio)
        self.conv = nn.Conv2d(half, half, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The HSTM block on (b, C, H, W): Mamba branch and convolution branch, concatenated, ReLU."""
        x_m, x_c = x.chunk(2, dim=1)
        m = self.reduce(self.expand(x_m.permute(0, 2, 3, 1)))
        m = m + self.ss2d(self.norm(m))
        return F.relu(torch.cat([m.permute(0, 3, 1, 2), self.conv(x_c)], dim=1))
