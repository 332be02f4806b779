"""Timing shared by the kernel benchmarks: synchronised wall and CPU time of back-to-back calls."""
from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, inner: int) -> tuple[float, float]:
    """(wall ms, process CPU ms) per call, averaged over ``inner`` back-to-back calls."""
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - w) * 1e3 / inner, (time.process_time() - c) * 1e3 / inner


def inner_count(fn, device: str, budget_ms: float = 20.0) -> int:
    """Calls per timed sample so that one sample lasts about ``budget_ms`` (sub-millisecond kernels would
    otherwise be timed one call at a time, i.e. mostly timer, dispatch and thread wake-up noise). The call
    made to measure is also a warm-up."""
    ms, _ = timed(fn, device, 1)
    return max(1, min(500, int(budget_ms / max(ms, 1e-3))))
