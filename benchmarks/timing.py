"""Timing shared by the kernel benchmarks: synchronised wall and CPU time of back-to-back calls, and GPU time
from CUDA events over CUDA graph replays."""
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


def cuda_time_ms(fn, reps: int = 15, calls: int = 10) -> tuple[float, float, str]:
    """(median, min) GPU milliseconds per call of ``fn`` and how they were taken.

    ``calls`` calls are captured in one CUDA graph, whose replays are timed with CUDA events, so host dispatch
    (tens of microseconds per eager op call) is not in the number. When the capture fails, eager calls are
    timed between CUDA events instead and the returned description says so."""
    import torch

    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside the capture: compilation, workspace allocation, attribute calls
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        run, how = graph.replay, f"CUDA graph of {calls} calls, replays timed with CUDA events"
    except Exception as exc:  # noqa: BLE001 - the fallback is reported with the number
        torch.cuda.synchronize()

        def run():
            for _ in range(calls):
                fn()

        how = f"eager calls between CUDA events, host dispatch included (graph capture failed: {exc!r:.120})"
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    times.sort()
    return times[len(times) // 2], times[0], how
