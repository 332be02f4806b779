"""Timing shared by the kernel benchmarks: synchronised wall and CPU time of back-to-back calls on the CPU, and
on a GPU the GPU time from CUDA events over replays of a CUDA graph of the calls (no host dispatch in it)."""
from __future__ import annotations

import statistics
import time
import warnings

import torch

GRAPH_CALLS = 10  # calls captured in one CUDA graph
KEPT_GRAPHS = 8  # captured graphs kept for reuse (each holds its calls' outputs in a private memory pool)
_graphs: dict = {}  # (fn, calls) -> replay callable, so repeated samples of one fn capture it once


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, inner: int) -> tuple[float, float]:
    """(ms, process CPU ms) per call over ``inner`` back-to-back calls.

    On the CPU the ms are wall time. On CUDA they are GPU time: CUDA events around replays of a CUDA graph of
    up to GRAPH_CALLS calls (captured once per ``fn``), so the tens of microseconds of host dispatch of an
    eager call are not in the number; where ``fn`` cannot be captured, eager calls between CUDA events
    (dispatch included, with a warning)."""
    if device == "cuda":
        calls = max(1, min(inner, GRAPH_CALLS))
        run = _graphs.get((fn, calls))
        if run is None:
            while len(_graphs) >= KEPT_GRAPHS:  # the oldest first: benchmarks time one function after another
                _graphs.pop(next(iter(_graphs)))
            run = _graphs[(fn, calls)] = _replayable(fn, calls)[0]
        reps = max(1, inner // calls)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        c = time.process_time()
        start.record()
        for _ in range(reps):
            run()
        end.record()
        end.synchronize()
        n = reps * calls
        return start.elapsed_time(end) / n, (time.process_time() - c) * 1e3 / n
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


def fwd_bwd_plan(cases, graphs: dict, device: str) -> dict:
    """What to time per backend: ``fwd`` always; ``bwd`` (replaying the backward of ``graphs[backend]``) and
    ``fwd_bwd`` where that graph is not None. Each entry is (callable, inner-loop count)."""
    plan = {}
    for c in cases:
        plan[c.backend] = dict(fwd=(c.forward, inner_count(c.forward, device)))
        if graphs[c.backend] is not None:
            bwd = lambda c=c, y=graphs[c.backend]: c.backward(y)  # noqa: E731
            plan[c.backend].update(bwd=(bwd, inner_count(bwd, device)),
                                   fwd_bwd=(c.forward_backward, inner_count(c.forward_backward, device)))
    return plan


def checked_baseline_ms(name: str, fn, op_name: str, op_fn, device: str, repeats: int) -> float:
    """Median forward ms of a baseline ``fn`` (no arguments) over ``repeats`` calibrated samples, after checking
    that it computes what ``op_fn()`` (the op ``op_name``) computes: a baseline computing something else would
    make every ratio against it meaningless."""
    with torch.no_grad():
        got, want = fn(), op_fn()
        if not torch.allclose(got, want.float(), rtol=1e-3, atol=1e-3):
            raise AssertionError(f"{name} baseline disagrees with {op_name}: {(got - want).abs().max():.3g}")
        inner = inner_count(fn, device)
        return statistics.median(timed(fn, device, inner)[0] for _ in range(repeats))


def run_on_devices(bench, shapes: list[dict], repeats: int, threads: int | None = None) -> list[dict]:
    """The rows of ``bench(shape, device, repeats)`` for every shape on the CPU, then on the GPU when there is one,
    with torch's intra-op thread count (also the C++ kernels' OpenMP team) set to ``threads`` for the run and
    restored afterwards (None: as set)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        for device in devices:
            for shape in shapes:
                rows.extend(bench(shape, device, repeats))
    finally:
        torch.set_num_threads(before)
    return rows


def _replayable(fn, calls: int):
    """(run, how): ``run()`` executes ``calls`` calls of ``fn`` as one CUDA graph replay, or eagerly when the
    capture fails (``how`` says which)."""
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
        return graph.replay, f"CUDA graph of {calls} calls, replays timed with CUDA events"
    except Exception as exc:  # noqa: BLE001 - the fallback is reported with the number
        torch.cuda.synchronize()
        warnings.warn(f"CUDA graph capture failed ({exc!r:.120}); timing eager calls, host dispatch included")

        def run():
            for _ in range(calls):
                fn()

        return run, f"eager calls between CUDA events, host dispatch included (graph capture failed: {exc!r:.120})"


def cuda_time_ms(fn, reps: int = 15, calls: int = GRAPH_CALLS) -> tuple[float, float, str]:
    """(median, min) GPU milliseconds per call of ``fn`` and how they were taken: ``calls`` calls captured in
    one CUDA graph whose replays are timed with CUDA events, or eager calls between events when the capture
    fails (host dispatch included; the description says so)."""
    run, how = _replayable(fn, calls)
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
