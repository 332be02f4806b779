"""Benchmark of the fused SS2D scan (``dhkd_kernels.ss2d_scan``): every available backend vs the reference.

For the DHKD Gnet shapes (4×4, 8×8, 32×32, 64×64 maps, D = 128, N = 16, batch 1) and a sweep over
D ∈ {128, 384, 768} × N ∈ {1, 16} on a 32×32 map, and for each backend that runs here, it measures:

* forward time, backward time and forward+backward time (median over repeats interleaved across
  backends, so every backend sees the same machine load; the fastest repeat and the process CPU time are
  recorded next to them because the build machine is shared and often oversubscribed),
* the ratio to the plain-PyTorch reference measured in the same run (our reference is itself a chunked,
  vectorised scan), and, for the forward, to a *sequential* PyTorch scan of the kind public repositories
  ship (the algorithm of mamba_ssm's ``selective_scan_ref``: the decays and inputs materialised as
  (4·D, L, N) tensors, then one Python-level step per position; checked against the reference before timing),
* on CPU, the ratio of the forward to the modelled CPU floor of docs/kernels.md — its
  *nominal* model of a 2-core machine: (F + 12·T) / 100 GFLOP/s with F = 6E + 7P, T = E + 2P,
  E = 4·L·D·N, P = 4·L·D — not a measured peak,
* backward / forward,
* the backward's memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the backward;
  on CPU the bytes of the gradients torch allocates plus, for the C++ backend, the workspace the kernel
  itself allocates (reported exactly by ``_cpu.ss2d_bwd_workspace_bytes``). The CPU reference's autograd
  peak is not measured (torch has no CPU allocator statistics).

The reference's backward is only timed up to E = 4·L·D·N = 8.4 M state updates (1 M in quick mode): its
autograd keeps every chunk's (T, 4D, N) intermediates (about 2 GB and tens of seconds at 64×64, D = 128,
N = 16 on the shared 2-core machine); those rows leave the backward fields empty.

Run ``python benchmarks/kernels_ss2d.py [--quick] [--threads 2 1]``: prints a table and writes
``benchmarks/results/kernels_ss2d_<date>_<host>.json``. ``run(quick)`` returns the rows.

``--gpu-check FILE.json`` (the SS2D step of benchmarks/gpu_check.sh) instead checks every GPU backend in every
I/O dtype at the four DHKD maps, batch 1 and 16, forward and backward against the float64 reference, and times
them on the GPU with CUDA events over CUDA graph replays (no host dispatch in the numbers); the JSON is
rewritten after every variant, and an exception in one variant is recorded in its row, not fatal.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from pathlib import Path

import torch

import dhkd_kernels
from dhkd.allocator import keep_freed_memory
from results_io import add_speedups, fmt, write_results
from timing import checked_baseline_ms, cuda_time_ms, fwd_bwd_plan, run_on_devices, timed
from dhkd_kernels import registry
from dhkd_kernels.ss2d import reference as ss2d_reference

OP = "ss2d_scan"
DHKD_MAPS = [(4, 4), (8, 8), (32, 32), (64, 64)]
SWEEP_MAP = (32, 32)
REF_BWD_MAX_E = {False: 4 * 1024 * 128 * 16, True: 4 * 64 * 128 * 16}  # by quick
FLOOR_NOTE = ("cpu floor = the nominal model of docs/kernels.md: (F + 12·T) / 100 GFLOP/s, F = 6E + 7P, "
              "T = E + 2P, E = 4·L·D·N, P = 4·L·D (a model of the 2-core build machine, not a measurement)")


def cpu_floor_ms(L: int, D: int, N: int) -> float:
    E, P = 4 * L * D * N, 4 * L * D
    return (6 * E + 7 * P + 12 * (E + 2 * P)) / 100e9 * 1e3


def shapes(quick: bool) -> list[dict]:
    out = [dict(group="dhkd", H=H, W=W, D=128, N=16) for H, W in DHKD_MAPS]
    for D in ((384,) if quick else (128, 384, 768)):
        for N in (1, 16):
            if (D, N) != (128, 16):  # 32×32, D = 128, N = 16 is already a DHKD shape
                out.append(dict(group="sweep", H=SWEEP_MAP[0], W=SWEEP_MAP[1], D=D, N=N))
    return out


def backends(device: str) -> list[str]:
    names = [b for b in registry.available_backends(OP, device)]
    if device == "cpu":  # the Triton interpreter is a debugging tool, far too slow to time
        names = [b for b in names if b != "triton"]
    return names


def make_inputs(H, W, D, N, device, seed=0, batch=1, dtype=torch.float32):
    """u, delta, A, B, C, D, delta_bias; u, delta, B, C in ``dtype`` (A, D, delta_bias always fp32)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, H, W, D, generator=g)
    delta = 0.5 * torch.randn(batch, H, W, 4, D, generator=g) - 0.5
    A = -(0.1 + 2.0 * torch.rand(4, D, N, generator=g))
    B, C = torch.randn(batch, H, W, 4, N, generator=g), torch.randn(batch, H, W, 4, N, generator=g)
    Dw, bias = torch.randn(4, D, generator=g), 0.3 * torch.randn(4, D, generator=g)
    io = [t.to(dtype) for t in (u, delta)] + [A] + [t.to(dtype) for t in (B, C)] + [Dw, bias]
    return [t.to(device) for t in io]


def sequential_scan(u, delta, A, B, C, Dw, bias):
    """SS2D forward the way public pure-PyTorch scans compute it (the algorithm of mamba_ssm's
    ``selective_scan_ref`` on VMamba's cross-scanned layout): cross-scan into (b, 4·D, L) sequences,
    materialise exp(dt·A) and dt·u·B for all L steps, walk the L steps one at a time, cross-merge.
    A benchmark baseline only (fp32, no autograd)."""
    bsz, H, W, Dch = u.shape
    seq = ss2d_reference.to_sequence
    dt = torch.nn.functional.softplus(delta + bias)  # (b, H, W, 4, D)
    us = torch.stack([seq(u, k) for k in range(4)], dim=2).flatten(2)  # (b, L, 4D)
    dts = torch.stack([seq(dt[:, :, :, k], k) for k in range(4)], dim=2).flatten(2)
    Bs = torch.stack([seq(B[:, :, :, k], k) for k in range(4)], dim=2)  # (b, L, 4, N)
    Cs = torch.stack([seq(C[:, :, :, k], k) for k in range(4)], dim=2)
    N = A.shape[-1]
    decay = torch.exp(dts.unsqueeze(-1) * A.reshape(1, 1, 4 * Dch, N))  # (b, L, 4D, N)
    drive = (dts * us).unsqueeze(-1) * Bs.repeat_interleave(Dch, dim=2)  # (b, L, 4D, N)
    Crep = Cs.repeat_interleave(Dch, dim=2)
    h = u.new_zeros(bsz, 4 * Dch, N)
    ys = []
    for t in range(H * W):
        h = decay[:, t] * h + drive[:, t]
        ys.append((h * Crep[:, t]).sum(-1))
    y = (torch.stack(ys, dim=1) + us * Dw.reshape(1, 1, -1)).view(bsz, H * W, 4, Dch)
    return sum(ss2d_reference.from_sequence(y[:, :, k], k, H, W) for k in range(4))


class Case:
    """One (backend, shape): callables for forward, backward alone and forward+backward."""

    def __init__(self, backend, inputs, device):
        self.backend, self.device = backend, device
        self.leaves = [t.clone().requires_grad_() for t in inputs]
        self.dy = torch.randn_like(inputs[0])

    def forward(self):
        with torch.no_grad(), dhkd_kernels.use_backend(self.backend):
            return dhkd_kernels.ss2d_scan(*self.leaves)

    def graph(self):
        with dhkd_kernels.use_backend(self.backend):
            return dhkd_kernels.ss2d_scan(*self.leaves)

    def backward(self, y):
        return torch.autograd.grad(y, self.leaves, self.dy, retain_graph=True)

    def forward_backward(self):
        return self.backward(self.graph())


def _memory(case: Case, shape: dict, y) -> dict:
    grads_bytes = sum(t.numel() * t.element_size() for t in case.leaves)
    if case.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.backward(y)
        torch.cuda.synchronize()
        return dict(bwd_peak_extra_bytes=torch.cuda.max_memory_allocated() - base,
                    bwd_memory_how="torch.cuda.max_memory_allocated during backward, above what was allocated")
    out = dict(bwd_grad_bytes=grads_bytes)
    if case.backend == "cpu":
        ws = registry.extension("_cpu").ss2d_bwd_workspace_bytes(1, shape["H"], shape["W"], shape["D"], shape["N"], 0,
                                                     torch.get_num_threads())
        out.update(bwd_workspace_bytes=ws, bwd_memory_how="gradients allocated by torch + the kernel's own "
                                                          "workspace (exact, from ss2d_bwd_workspace_bytes)")
    else:
        out.update(bwd_memory_how="gradients only; autograd intermediates of the reference not measured on CPU")
    return out


def _separate_ops(inputs):
    """Cross-scan + scan + merge as separate GPU operations (``ss2d_separate``) on ``inputs``, as a call
    without arguments; delta, B and C are put in sequence order here, outside the timed call."""
    import ss2d_separate

    prepared = ss2d_separate.prepare(*inputs)
    return lambda: ss2d_separate.separate_ops(*prepared)


def bench_shape(shape: dict, device: str, repeats: int, quick: bool) -> list[dict]:
    H, W, D, N = shape["H"], shape["W"], shape["D"], shape["N"]
    inputs = make_inputs(H, W, D, N, device)
    cases = [Case(b, inputs, device) for b in backends(device)]
    with_bwd = {c.backend: c.backend != "reference" or 4 * H * W * D * N <= REF_BWD_MAX_E[quick] for c in cases}
    graphs = {c.backend: c.graph() if with_bwd[c.backend] else None for c in cases}
    plan = fwd_bwd_plan(cases, graphs, device)
    samples = {c.backend: {k: [] for k in plan[c.backend]} for c in cases}
    for _ in range(repeats):  # interleaved: each repeat times every backend once
        for c in cases:
            for what, (fn, inner) in plan[c.backend].items():
                samples[c.backend][what].append(timed(fn, device, inner))
    rows = []
    L = H * W
    for c in cases:
        med = {what: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
               for what, v in samples[c.backend].items()}
        none = (None, None)
        row = dict(shape, L=L, device=device, backend=c.backend, dtype="float32", batch=1,
                   threads=torch.get_num_threads(), repeats=repeats,
                   fwd_ms=med["fwd"][0], bwd_ms=med.get("bwd", none)[0], fwd_bwd_ms=med.get("fwd_bwd", none)[0],
                   fwd_cpu_ms=med["fwd"][1], bwd_cpu_ms=med.get("bwd", none)[1],
                   fwd_bwd_cpu_ms=med.get("fwd_bwd", none)[1],
                   bwd_over_fwd=med["bwd"][0] / med["fwd"][0] if "bwd" in med else None,
                   bwd_over_fwd_cpu_time=med["bwd"][1] / med["fwd"][1] if "bwd" in med else None,
                   **{f"{what}_min_ms": min(x[0] for x in v) for what, v in samples[c.backend].items()})
        if device == "cpu":
            row["cpu_floor_ms"] = cpu_floor_ms(L, D, N)
            row["fwd_over_floor"] = row["fwd_ms"] / row["cpu_floor_ms"]
            row["fwd_min_over_floor"] = row["fwd_min_ms"] / row["cpu_floor_ms"]
        if with_bwd[c.backend]:
            row.update(_memory(c, shape, graphs[c.backend]))
        rows.append(row)
    seq_ms = sep_ms = None
    if device == "cpu":
        seq_ms = checked_baseline_ms("sequential", lambda: sequential_scan(*inputs), "ss2d_scan", cases[0].forward,
                                     device, repeats)
    elif registry.triton_available(device):
        sep_ms = checked_baseline_ms("separate-ops", _separate_ops(inputs), "ss2d_scan", cases[0].forward, device,
                                     repeats)
    add_speedups(rows, {"sequential": seq_ms, "separate_ops": sep_ms})
    return rows


def run(quick: bool, threads: int | None = None) -> list[dict]:
    """Benchmark rows for every shape × available backend (CPU, and CUDA when a GPU is present).

    ``threads``: torch's intra-op thread count for the run (also the C++ kernels' OpenMP team); default as set.
    """
    rows = run_on_devices(lambda shape, device, repeats: bench_shape(shape, device, repeats, quick), shapes(quick),
                          3 if quick else 5, threads)
    for r in rows:
        r["floor_note"] = FLOOR_NOTE if r["device"] == "cpu" else None
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'dev':4} {'thr':>3} {'map':>6} {'D':>4} {'N':>3} {'backend':>9} {'fwd ms':>9} {'fwd min':>9} {'fwd cpu':>9} {'f+b ms':>9} "
            f"{'bwd/fwd':>7} {'(cpu t)':>7} {'x ref fwd':>9} {'x ref f+b':>9} {'x base fwd':>10} {'fwd/floor':>9} {'min/floor':>9} {'bwd MB':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mem = r.get("bwd_peak_extra_bytes", (r.get("bwd_grad_bytes") or 0) + (r.get("bwd_workspace_bytes") or 0))
        mem = mem / 1e6 if mem else None
        print(f"{r['device']:4} {r['threads']:>3} {str(r['H']) + 'x' + str(r['W']):>6} {r['D']:>4} {r['N']:>3} {r['backend']:>9} "
              f"{r['fwd_ms']:9.3f} {r['fwd_min_ms']:9.3f} {r['fwd_cpu_ms']:9.3f} {fmt(r['fwd_bwd_ms'], '9.3f')} "
              f"{fmt(r['bwd_over_fwd'], '7.2f')} {fmt(r['bwd_over_fwd_cpu_time'], '7.2f')} "
              f"{fmt(r.get('fwd_speedup_vs_reference'), '9.1f')} {fmt(r.get('fwd_bwd_speedup_vs_reference'), '9.1f')} "
              f"{fmt(r.get('fwd_speedup_vs_sequential', r.get('fwd_speedup_vs_separate_ops')), '10.1f')} "
              f"{fmt(r.get('fwd_over_floor'), '9.2f')} {fmt(r.get('fwd_min_over_floor'), '9.2f')} "
              f"{fmt(mem, '7.2f')}")
    print(f"\nTimes are medians over interleaved repeats (fwd min: the fastest repeat); fwd cpu, (cpu t) = process "
          f"CPU time per call (all threads; OpenMP barrier spinning counts in it); {FLOOR_NOTE}.")
    print("x base fwd: forward speed-up over the public-style pipeline: on CPU a sequential PyTorch scan "
          "(materialised decays, one Python step per position); on GPU cross-scan, a Triton selective scan and "
          "cross-merge as separate operations (benchmarks/ss2d_separate.py; issue target >= 3x).")
    print("bwd MB: CUDA = peak allocation during backward; CPU = gradients + (C++ backend) the kernel's "
          "workspace; the CPU reference's autograd intermediates are not included.")


# ------------------------------------------------------------------------------------------------------------
# GPU check (benchmarks/gpu_check.sh)
# ------------------------------------------------------------------------------------------------------------

GPU_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# max |x - ref| / max |ref| allowed against the float64 reference on the same (rounded) inputs: forward, backward
GPU_TOL = {"float32": (2e-4, 1e-3), "bfloat16": (3e-2, 6e-2), "float16": (1e-2, 5e-2)}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _rel_err(x, ref) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


REF_GRAD_MAX_E = 1 << 28  # 4·b·L·D·N above which the float64 reference's autograd (~100 B per E) is skipped


def _reference(inputs):
    """float64 reference output and gradients (dy fixed by seed) on the same device; gradients None where the
    reference's autograd would hold too much (batch 16 at 64x64: about 50 GB)."""
    u, A = inputs[0], inputs[2]
    big = 4 * u.numel() * A.shape[-1] > REF_GRAD_MAX_E
    leaves = [t.detach().double().requires_grad_(not big) for t in inputs]
    y = ss2d_reference.ss2d_scan_reference(*leaves, delta_softplus=True, out_float=True)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    if big:
        return y.detach(), dy, None
    grads = torch.autograd.grad(y, leaves, dy)
    return y.detach(), dy, [g.detach() for g in grads]


def _check_variant(backend, inputs, ref, dtype_name) -> dict:
    """Forward and backward of one backend against the reference, then GPU timings of both."""
    from dhkd_kernels.ss2d import ops

    y_ref, dy, g_ref = ref
    row = {}
    leaves = [t.clone().requires_grad_() for t in inputs]
    with dhkd_kernels.use_backend(backend):
        y = dhkd_kernels.ss2d_scan(*leaves, out_float=True)  # as DHKD's SS2D module calls it
    row["fwd_rel_err"] = _rel_err(y, y_ref)
    fwd_tol, bwd_tol = GPU_TOL[dtype_name]
    row["ok"] = bool(row["fwd_rel_err"] <= fwd_tol and torch.isfinite(y).all().item())
    if g_ref is None:
        row["bwd_rel_err"] = "not checked: the float64 reference's autograd is too large here"
    else:
        grads = torch.autograd.grad(y, leaves, dy.float())
        row["bwd_rel_err"] = {n: _rel_err(g, r) for n, g, r in zip(GRAD_NAMES, grads, g_ref)}
        row["ok"] = row["ok"] and max(row["bwd_rel_err"].values()) <= bwd_tol
    args = [t.detach() for t in inputs]
    dy_io = dy.float()
    with torch.no_grad():
        fwd = lambda: ops._ss2d_scan_op(*args, True, True, backend)  # noqa: E731
        bwd = lambda: ops._ss2d_scan_backward_op(dy_io, *args, True, backend)  # noqa: E731
        fwd_ms, fwd_min, row["timing"] = cuda_time_ms(fwd)
        bwd_ms, bwd_min, _ = cuda_time_ms(bwd, reps=7, calls=3)
    row["fwd_us"], row["fwd_min_us"] = fwd_ms * 1e3, fwd_min * 1e3
    row["bwd_us"], row["bwd_min_us"] = bwd_ms * 1e3, bwd_min * 1e3
    row["bwd_over_fwd"] = row["bwd_us"] / row["fwd_us"]
    return row


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)  # a kill leaves the previous complete file, never a torn one


def gpu_check(out: Path, budget_s: float = 240.0, batches=(1, 16)) -> dict:
    """Correctness and GPU timings of every GPU backend and dtype at the DHKD maps (see the module docstring).
    Variants run most valuable first (64x64 batch 1 fp32 first); those past ``budget_s`` are recorded as
    skipped. Returns the data written to ``out``."""
    t0 = time.monotonic()
    names = [b for b in registry.available_backends(OP, "cuda") if b != "reference"]
    data = dict(meta=dict(device=torch.cuda.get_device_name(), torch=torch.__version__, backends=names,
                          tolerances=GPU_TOL, started=time.strftime("%Y-%m-%d %H:%M:%S")),
                rows=[], summary={})
    order = [(H, W, b, dt) for b in batches for (H, W) in reversed(DHKD_MAPS) for dt in GPU_DTYPES]
    order.sort(key=lambda v: (v[2] != 1 or v[0] != 64, v[2], -v[0], list(GPU_DTYPES).index(v[3])))
    for H, W, bsz, dt in order:
        base = dict(H=H, W=W, D=128, N=16, batch=bsz, dtype=dt)
        if time.monotonic() - t0 > budget_s:
            data["rows"].append(dict(base, backend="*", error=f"skipped: past the {budget_s:.0f} s budget"))
            continue
        try:
            inputs = make_inputs(H, W, 128, 16, "cuda", batch=bsz, dtype=GPU_DTYPES[dt])
            ref = _reference(inputs)
        except Exception as exc:  # noqa: BLE001 - recorded, the next variant runs
            data["rows"].append(dict(base, backend="reference", error=f"{exc!r:.300}"))
            torch.cuda.empty_cache()
            _write_json(out, data)
            continue
        for backend in names:
            row = dict(base, backend=backend)
            try:
                row.update(_check_variant(backend, inputs, ref, dt))
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{exc!r:.300}"
                row["traceback"] = traceback.format_exc()[-1500:]
                torch.cuda.empty_cache()
            data["rows"].append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("bwd_rel_err", "traceback", "timing")}, flush=True)
            _write_json(out, data)
        if (H, W, bsz, dt) == (64, 64, 1, "float32"):
            data["summary"].update(_targets(inputs, data["rows"]))
            _write_json(out, data)
        del inputs, ref
    data["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    _write_json(out, data)
    return data


def _targets(inputs, rows) -> dict:
    """The issue's ratios at 64x64, D=128, N=16, batch 1, fp32: separate-ops baseline over CUDA forward,
    Triton over CUDA, backward over forward (each backend's rows are already in ``rows``)."""
    here = {r["backend"]: r for r in rows if (r["H"], r["batch"], r["dtype"]) == (64, 1, "float32") and "fwd_us" in r}
    out = {f"{b}_fwd_us": r["fwd_us"] for b, r in here.items()}
    out.update({f"{b}_bwd_over_fwd": r["bwd_over_fwd"] for b, r in here.items()})
    if "cuda" in here and "triton" in here:
        out["triton_over_cuda_fwd"] = here["triton"]["fwd_us"] / here["cuda"]["fwd_us"]
    try:
        sep = _separate_ops([t.detach() for t in inputs])
        with torch.no_grad():
            out["separate_ops_fwd_us"] = cuda_time_ms(sep)[0] * 1e3
        if "cuda" in here:
            out["separate_over_cuda_fwd"] = out["separate_ops_fwd_us"] / here["cuda"]["fwd_us"]
    except Exception as exc:  # noqa: BLE001
        out["separate_ops_error"] = f"{exc!r:.300}"
    try:
        with torch.no_grad():
            ref_fn = lambda: ss2d_reference.ss2d_scan_reference(*inputs, out_float=True)  # noqa: E731
            out["reference_fwd_us"] = cuda_time_ms(ref_fn, reps=5, calls=2)[0] * 1e3
    except Exception as exc:  # noqa: BLE001
        out["reference_error"] = f"{exc!r:.300}"
    print("targets:", {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--threads", type=int, nargs="*", default=[None],
                        help="run once per thread count (e.g. --threads 2 1); default: torch's setting")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--gpu-check", type=Path, default=None, metavar="JSON",
                        help="GPU correctness + timing of every backend and dtype at the DHKD maps, into JSON")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for --gpu-check")
    args = parser.parse_args(argv)
    if args.gpu_check:
        if not torch.cuda.is_available():
            print("SKIPPED: --gpu-check needs a CUDA GPU (none visible)")
            return
        gpu_check(args.gpu_check, args.budget)
        return
    kept = keep_freed_memory()  # outputs reuse freed memory: time the kernels, not first-touch page faults
    load = os.getloadavg()
    rows = [row for n in args.threads for row in run(args.quick, n)]
    print_table(rows)
    write_results("kernels_ss2d", rows, quick=args.quick, load_before=load, freed_memory_kept=kept, out=args.out)


if __name__ == "__main__":
    main()
