"""VMamba-compatible cross-scan, cross-merge and selective scan: replace VMamba's imports of
``cross_scan_fn``, ``cross_merge_fn`` and ``selective_scan_fn`` (and the older ``CrossScan`` / ``CrossMerge``)
by ``from dhkd_kernels.compat.vmamba import ...``; the SS2D code around them runs unchanged.

Layouts (VMamba's): the image side is (B, C, H, W) if ``in_channel_first`` else (B, H, W, C); the sequence
side is (B, K=4, C, L) if ``out_channel_first`` else (B, L, 4, C), L = H·W. ``scans`` picks the four
directions: 0 cross (row-major, column-major and their reverses), 1 four times row-major, 2 row-major twice
and its reverse twice, 3 the four 90° rotations. ``one_by_one``: direction k scans its own input (B, 4, C, H, W)
and the merge returns the four directions unsummed. Everything is differentiable (plain tensor ops); the scan
runs on :func:`dhkd_kernels.selective_scan`.
"""
from __future__ import annotations

import torch

from ..selective_scan import selective_scan

K = 4  # directions


def _check_scans(scans: int) -> None:
    if scans not in (0, 1, 2, 3):
        raise ValueError(f"scans must be 0 (cross), 1 (unidirectional), 2 (bidirectional) or 3 (rotations), "
                         f"got {scans!r}")


def _scan_one(x: torch.Tensor, k: int, scans: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, L) in direction k's order."""
    if scans == 3:
        return torch.rot90(x, k, dims=(2, 3)).flatten(2)
    transposed = scans == 0 and k % 2 == 1
    seq = (x.transpose(2, 3) if transposed else x).flatten(2)
    reverse = (scans == 0 and k >= 2) or (scans == 2 and k >= 2)
    return seq.flip(-1) if reverse else seq


def _merge_one(y: torch.Tensor, k: int, scans: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`_scan_one`: (B, C, L) in direction k's order -> (B, C, H, W)."""
    bsz, C = y.shape[:2]
    if scans == 3:
        shape = (H, W) if k % 2 == 0 else (W, H)
        return torch.rot90(y.reshape(bsz, C, *shape), -k, dims=(2, 3))
    reverse = (scans == 0 and k >= 2) or (scans == 2 and k >= 2)
    y = y.flip(-1) if reverse else y
    if scans == 0 and k % 2 == 1:
        return y.reshape(bsz, C, W, H).transpose(2, 3)
    return y.reshape(bsz, C, H, W)


def cross_scan_fn(x: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True,
                  one_by_one: bool = False, scans: int = 0, force_torch: bool = False) -> torch.Tensor:
    """VMamba's cross-scan: (B, C, H, W) | (B, H, W, C) | one_by_one (B, 4, C, H, W) | (B, H, W, 4, C)
    -> (B, 4, C, L) | (B, L, 4, C). ``force_torch`` is accepted for compatibility (this is always torch)."""
    _check_scans(scans)
    want = 5 if one_by_one else 4
    if x.dim() != want:
        raise ValueError(f"cross_scan_fn expects a {want}-D input (one_by_one={one_by_one}), got {tuple(x.shape)}")
    if not in_channel_first:  # channels-last image side -> channel-first
        x = x.permute(0, 3, 4, 1, 2) if one_by_one else x.permute(0, 3, 1, 2)
    ys = [_scan_one(x[:, k] if one_by_one else x, k, scans) for k in range(K)]
    y = torch.stack(ys, dim=1)  # (B, 4, C, L)
    return y if out_channel_first else y.permute(0, 3, 1, 2)


def cross_merge_fn(y: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True,
                   one_by_one: bool = False, scans: int = 0, force_torch: bool = False) -> torch.Tensor:
    """VMamba's cross-merge: (B, 4, C, H, W) | (B, H, W, 4, C) -> (B, C, L) | (B, L, C), the four directions
    mapped back to pixel order and summed (one_by_one: (B, 4, C, L) | (B, L, 4, C), not summed)."""
    _check_scans(scans)
    if y.dim() != 5 or (y.shape[1] if out_channel_first else y.shape[3]) != K:
        layout = "(B, 4, C, H, W)" if out_channel_first else "(B, H, W, 4, C)"
        raise ValueError(f"cross_merge_fn expects {layout}, got {tuple(y.shape)}")
    if not out_channel_first:
        y = y.permute(0, 3, 4, 1, 2)
    bsz, _, C, H, W = y.shape
    seqs = y.reshape(bsz, K, C, H * W)
    maps = [_merge_one(seqs[:, k], k, scans, H, W).flatten(2) for k in range(K)]  # (B, C, L) each
    if one_by_one:
        out = torch.stack(maps, dim=1)  # (B, 4, C, L)
        return out if in_channel_first else out.permute(0, 3, 1, 2)
    out = maps[0] + maps[1] + maps[2] + maps[3]
    return out if in_channel_first else out.transpose(1, 2)


class CrossScan(torch.autograd.Function):
    """The older VMamba API: ``CrossScan.apply(x)``, (B, C, H, W) -> (B, 4, C, L)."""

    @staticmethod
    def forward(ctx, x):
        """The four scan orders of x: (B, C, H, W) -> (B, 4, C, L)."""
        ctx.shape = x.shape
        return cross_scan_fn(x)

    @staticmethod
    def backward(ctx, ys):
        """The gradient of the cross-scan is the cross-merge of the incoming gradients."""
        bsz, C, H, W = ctx.shape
        return cross_merge_fn(ys.reshape(bsz, K, C, H, W)).reshape(bsz, C, H, W)


class CrossMerge(torch.autograd.Function):
    """The older VMamba API: ``CrossMerge.apply(ys)``, (B, 4, D, H, W) -> (B, D, L)."""

    @staticmethod
    def forward(ctx, ys):
        """The four directions summed back per pixel: (B, 4, D, H, W) -> (B, D, L)."""
        ctx.shape = ys.shape
        return cross_merge_fn(ys)

    @staticmethod
    def backward(ctx, x):
        """The gradient of the cross-merge is the cross-scan of the incoming gradient."""
        bsz, _, C, H, W = ctx.shape
        return cross_scan_fn(x.reshape(bsz, C, H, W)).reshape(bsz, K, C, H, W)


def selective_scan_fn(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                      delta_softplus: bool = True, oflex: bool = True, backend: str | None = None) -> torch.Tensor:
    """VMamba's selective scan on the (B, K·D, L) layout: u, delta (B, K·D, L); A (K·D, N); B, C (B, K, N, L)
    (channel block k uses B[:, k]); D, delta_bias (K·D,). ``oflex=True`` returns fp32 whatever the input
    dtype (VMamba's "output flexible" mode), else u's dtype. ``backend`` (VMamba's kernel choice: None, "oflex",
    "mamba", "core", "torch") is accepted for compatibility; the backend here is chosen by
    :func:`dhkd_kernels.use_backend` and the device."""
    if backend not in (None, "oflex", "mamba", "core", "torch"):
        raise ValueError(f"unknown VMamba selective-scan backend {backend!r}")
    out = selective_scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
    return out.float() if oflex else out
