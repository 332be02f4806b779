"""Benchmark of the selective scan (``dhkd_kernels.selective_scan``): every available backend vs the reference.

Shapes: Mamba-LM mixers (D = 1536 and 2048, N = 16, L = 2048, batch 1, with the z gate, B/C (b, 1, N, L), as
mamba_ssm's ``selective_scan_fn`` is called in a Mamba block) and a VMamba SS2D scan on its (B, K·D, L)
layout (stage 1 of VMamba-T at 56×56: K·D = 4·192, L = 3136, N = 16, B/C grouped per direction, no z).
For each backend that runs here it measures, in one run with repeats interleaved across backends:

* forward, backward and forward+backward time (CPU: medians of repeats interleaved across backends, the
  fastest repeat and the process CPU time beside; CUDA: CUDA events over CUDA graph replays),
* the ratio to the plain-PyTorch reference (forward; its backward only where its autograd memory is
  reasonable, see REF_BWD_MAX_E) and, for the forward, to a *sequential* PyTorch scan of the kind public
  repositories ship (the algorithm of mamba_ssm's ``selective_scan_ref``: decays and inputs materialised as
  (b, D, L, N) tensors, then one Python-level step per position; checked against the op before timing),
* on CPU, the ratio of the forward to the modelled 2-core floor — the same nominal model as the SS2D benchmark:
  (F + 12·T) / 100 GFLOP/s with F = 6E + 7P, T = E + 2P, E = b·L·D·N, P = b·L·D, plus 2P FLOPs and P
  transcendentals for the z gate (silu) — a model of the machine, not a measured peak,
* backward / forward, and the backward's memory (CPU: gradients + the kernel's exact workspace; CUDA: peak
  allocation during the backward).

Run ``python benchmarks/kernels_selective_scan.py [--quick] [--threads N]``: prints a table and writes
``benchmarks/results/kernels_selective_scan_<date>_<host>.json``. ``run(quick)`` returns the rows.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import dhkd_kernels
from dhkd.allocator import keep_freed_memory
from results_io import add_speedups, fmt, write_results
from timing import checked_baseline_ms, cuda_time_ms, fwd_bwd_plan, run_on_devices, timed
from dhkd_kernels import registry

OP = "selective_scan"
REF_BWD_MAX_E = 4 * 1024 * 192 * 16  # reference autograd keeps every chunk's (64, D, N) intermediates
FLOOR_NOTE = ("cpu floor = nominal 2-core model as for SS2D: (F + 12·T) / 100 GFLOP/s, F = 6E + 7P (+2P with z), "
              "T = E + 2P (+P with z), E = b·L·D·N, P = b·L·D (a model of the machine, not a measurement)")


def cpu_floor_ms(bsz: int, L: int, D: int, N: int, has_z: bool) -> float:
    E, P = bsz * L * D * N, bsz * L * D
    flops = 6 * E + 7 * P + (2 * P if has_z else 0)
    transcendentals = E + 2 * P + (P if has_z else 0)
    return (flops + 12 * transcendentals) / 100e9 * 1e3


def shapes(quick: bool) -> list[dict]:
    mamba = [dict(group="mamba-lm", D=D, L=2048, N=16, G=1, z=True) for D in ((1536,) if quick else (1536, 2048))]
    vmamba = [dict(group="vmamba-t s1", D=4 * 192, L=(28 * 28 if quick else 56 * 56), N=16, G=4, z=False)]
    return mamba + vmamba


def backends(device: str) -> list[str]:
    names = registry.available_backends(OP, device)
    if device == "cpu":  # the Triton interpreter is a debugging tool, far too slow to time
        names = [b for b in names if b != "triton"]
    return names


def make_inputs(D, L, N, G, z, device, seed=0):
    """Seeded inputs in Mamba's regime: A = -(1..N) per channel (S4D-real), dt ~ softplus(delta + bias) in
    [1e-3, 0.1]-ish, D = 1."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, D, L, generator=g)
    delta = 0.5 * torch.randn(1, D, L, generator=g)
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(D, 1)
    B, C = torch.randn(1, G, N, L, generator=g), torch.randn(1, G, N, L, generator=g)
    Dw = torch.ones(D)
    bias = torch.log(torch.expm1(torch.empty(D).uniform_(1e-3, 0.1, generator=g)))  # inverse softplus
    zz = torch.randn(1, D, L, generator=g) if z else None
    return [None if t is None else t.to(device) for t in (u, delta, A, B, C, Dw, zz, bias)]


def sequential_scan(u, delta, A, B, C, Dw, z, bias):
    """The forward as public pure-PyTorch scans compute it (mamba_ssm's ``selective_scan_ref`` algorithm):
    materialise exp(dt·A) and dt·u·B for all L steps as (b, D, L, N), walk the L steps one at a time.
    A benchmark baseline only (fp32, no autograd)."""
    dt = F.softplus(delta + bias[:, None])
    Dch, G = u.shape[1], B.shape[1]
    Bx, Cx = (t.repeat_interleave(Dch // G, dim=1) for t in (B, C))  # (b, D, N, L)
    decay = torch.exp(dt.unsqueeze(-1) * A[:, None])  # (b, D, L, N)
    drive = (dt * u).unsqueeze(-1) * Bx.transpose(2, 3)
    h = u.new_zeros(u.shape[0], Dch, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) + u * Dw[:, None]
    return y * F.silu(z) if z is not None else y


class Case:
    """One (backend, shape): callables for forward, backward alone and forward+backward."""

    def __init__(self, backend, inputs):
        self.backend = backend
        self.leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
        self.dout = torch.randn_like(inputs[0])

    def forward(self):
        with torch.no_grad(), dhkd_kernels.use_backend(self.backend):
            return dhkd_kernels.selective_scan(*self.leaves, delta_softplus=True)

    def graph(self):
        with dhkd_kernels.use_backend(self.backend):
            return dhkd_kernels.selective_scan(*self.leaves, delta_softplus=True)

    def backward(self, y):
        return torch.autograd.grad(y, [t for t in self.leaves if t is not None], self.dout, retain_graph=True)

    def forward_backward(self):
        return self.backward(self.graph())


def _memory(case: Case, shape: dict, y, device: str) -> dict:
    grads = sum(t.numel() * t.element_size() for t in case.leaves if t is not None)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.backward(y)
        torch.cuda.synchronize()
        return dict(bwd_peak_extra_bytes=torch.cuda.max_memory_allocated() - base)
    out = dict(bwd_grad_bytes=grads)
    if case.backend == "cpu":
        out["bwd_workspace_bytes"] = registry.extension("_cpu").selective_scan_bwd_workspace_bytes(
            1, shape["D"], shape["L"], shape["N"], shape["G"], True, True, shape["z"], torch.get_num_threads())
    return out


def _measure(plan: dict, device: str, repeats: int) -> dict:
    """{backend: {what: (median ms, median process CPU ms or None, min ms)}}. CPU: ``repeats`` calibrated
    samples interleaved across backends (each repeat times every backend once); CUDA: CUDA events over CUDA
    graph replays (eager calls between events where a capture fails), per backend."""
    if device == "cuda":
        out = {}
        for backend, items in plan.items():
            out[backend] = {}
            for what, (fn, _) in items.items():
                med, low, _how = cuda_time_ms(fn)
                out[backend][what] = (med, None, low)
        return out
    samples = {backend: {what: [] for what in items} for backend, items in plan.items()}
    for _ in range(repeats):
        for backend, items in plan.items():
            for what, (fn, inner) in items.items():
                samples[backend][what].append(timed(fn, device, inner))
    return {backend: {what: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
                             min(x[0] for x in v)) for what, v in items.items()}
            for backend, items in samples.items()}


def bench_shape(shape: dict, device: str, repeats: int) -> list[dict]:
    D, L, N = shape["D"], shape["L"], shape["N"]
    inputs = make_inputs(D, L, N, shape["G"], shape["z"], device)
    cases = [Case(b, inputs) for b in backends(device)]
    with_bwd = {c.backend: c.backend != "reference" or L * D * N <= REF_BWD_MAX_E for c in cases}
    graphs = {c.backend: c.graph() if with_bwd[c.backend] else None for c in cases}
    plan = fwd_bwd_plan(cases, graphs, device)
    stats = _measure(plan, device, repeats)
    rows = []
    for c in cases:
        med = stats[c.backend]
        none = (None, None, None)
        row = dict(shape, device=device, backend=c.backend, dtype="float32", batch=1,
                   threads=torch.get_num_threads(), repeats=repeats,
                   fwd_ms=med["fwd"][0], bwd_ms=med.get("bwd", none)[0], fwd_bwd_ms=med.get("fwd_bwd", none)[0],
                   fwd_cpu_ms=med["fwd"][1], bwd_cpu_ms=med.get("bwd", none)[1],
                   bwd_over_fwd=med["bwd"][0] / med["fwd"][0] if "bwd" in med else None,
                   bwd_over_fwd_cpu_time=(med["bwd"][1] / med["fwd"][1] if "bwd" in med and med["fwd"][1]
                                          else None),
                   **{f"{what}_min_ms": v[2] for what, v in med.items()})
        if device == "cuda":
            row["timing"] = "median of CUDA-event timings (timing.cuda_time_ms)"
        if device == "cpu":
            row["cpu_floor_ms"] = cpu_floor_ms(1, L, D, N, shape["z"])
            row["fwd_over_floor"] = row["fwd_ms"] / row["cpu_floor_ms"]
            row["fwd_min_over_floor"] = row["fwd_min_ms"] / row["cpu_floor_ms"]
        if with_bwd[c.backend]:
            row.update(_memory(c, shape, graphs[c.backend], device))
        rows.append(row)
    seq_ms = None
    if device == "cpu":
        seq_ms = checked_baseline_ms("sequential", lambda: sequential_scan(*inputs), "selective_scan",
                                     cases[0].forward, device, repeats)
    add_speedups(rows, {"sequential": seq_ms})
    return rows


def run(quick: bool, threads: int | None = None) -> list[dict]:
    """Benchmark rows for every shape × available backend (CPU, and CUDA when a GPU is present)."""
    rows = run_on_devices(bench_shape, shapes(quick), 3 if quick else 5, threads)
    for r in rows:
        r["floor_note"] = FLOOR_NOTE if r["device"] == "cpu" else None
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'dev':4} {'thr':>3} {'group':>11} {'D':>4} {'L':>5} {'N':>3} {'backend':>9} {'fwd ms':>9} {'fwd min':>9} "
            f"{'fwd cpu':>9} {'bwd ms':>9} {'f+b ms':>9} {'bwd/fwd':>7} {'(cpu t)':>7} {'x ref fwd':>9} {'x seq fwd':>9} "
            f"{'fwd/floor':>9} {'min/floor':>9} {'bwd MB':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mem = r.get("bwd_peak_extra_bytes", (r.get("bwd_grad_bytes") or 0) + (r.get("bwd_workspace_bytes") or 0))
        print(f"{r['device']:4} {r['threads']:>3} {r['group']:>11} {r['D']:>4} {r['L']:>5} {r['N']:>3} {r['backend']:>9} "
              f"{r['fwd_ms']:9.2f} {r['fwd_min_ms']:9.2f} {fmt(r['fwd_cpu_ms'], '9.2f')} {fmt(r['bwd_ms'], '9.2f')} "
              f"{fmt(r['fwd_bwd_ms'], '9.2f')} {fmt(r['bwd_over_fwd'], '7.2f')} {fmt(r['bwd_over_fwd_cpu_time'], '7.2f')} "
              f"{fmt(r.get('fwd_speedup_vs_reference'), '9.1f')} {fmt(r.get('fwd_speedup_vs_sequential'), '9.1f')} "
              f"{fmt(r.get('fwd_over_floor'), '9.2f')} {fmt(r.get('fwd_min_over_floor'), '9.2f')} "
              f"{fmt(mem / 1e6 if mem else None, '7.1f')}")
    print(f"\nTimes are medians over interleaved repeats (fwd min: the fastest repeat); fwd cpu, (cpu t) = process CPU "
          f"time per call (all threads). x seq fwd: forward speed-up over a sequential PyTorch scan (materialised "
          f"decays, one Python step per position). {FLOOR_NOTE}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter VMamba map, fewer repeats")
    parser.add_argument("--threads", type=int, nargs="*", default=[None],
                        help="run once per thread count (e.g. --threads 2 1); default: torch's setting")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    kept = keep_freed_memory()  # outputs reuse freed memory: time the kernels, not first-touch page faults
    load = os.getloadavg()
    rows = [row for n in args.threads for row in run(args.quick, n)]
    print_table(rows)
    write_results("kernels_selective_scan", rows, quick=args.quick, load_before=load, freed_memory_kept=kept,
                  out=args.out)


if __name__ == "__main__":
    main()
