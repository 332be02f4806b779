"""Fused SCMM and FCCM kernels against the unfused PyTorch sequences they replace, per available backend.

    python benchmarks/kernels_fused.py [--quick] [--threads N] [--out PATH]

What is fused (ours) and what stays in the library (PyTorch/oneDNN/cuBLAS/cuDNN):
  SCMM  two_scale : chunk + depth-wise 3×3 + adaptive max-pool + depth-wise 3×3 + nearest upsample + cat
                    -> one kernel (x read once, s written once)
        gate      : relu(G), ·x, +x -> one kernel
        the two 1×1 convs (aggr, proj) and the final + x stay library calls
  FCCM  pool_relu : (+bias) + maxpool 2×2 + ReLU after the bias-free k4 s2 conv -> one kernel
        bias_gelu : (+bias) + exact GELU after the bias-free 3×3 conv -> one kernel
        the three convolutions stay library calls
Rows: each fused piece against its unfused sequence, the fused pieces together ("parts"), and the whole
block forward and forward+backward against the reference. Times are per-call medians of interleaved
repeats (each a calibrated run of back-to-back calls, ~20 ms) in one run (ratio = unfused / fused, > 1 means the fused path is faster). Bytes are an analytic count of
tensor reads + writes (weights ignored); "x bound" = fused time / (fused bytes / the copy bandwidth measured
in the same run), i.e. how far a memory-bound fused kernel is from moving its bytes at copy speed. JSON goes to ``benchmarks/results/kernels_fused_<date>_<host>.json``;
``run(quick)`` returns the rows.
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
from results_io import write_results
from timing import inner_count, timed
from dhkd_kernels import registry
from dhkd_kernels.fccm import fccm_bias_gelu, fccm_pool_relu
from dhkd_kernels.fccm import ops as fccm_ops
from dhkd_kernels.fccm import reference as fccm_reference
from dhkd_kernels.scmm import gate_residual, two_scale_depthwise
from dhkd_kernels.scmm import ops as scmm_ops
from dhkd_kernels.scmm import reference as scmm_reference

C, HIDDEN, HW = 384, 768, 64  # DHKD: SCMM on 384×64×64; FCCM input 384×64×64
NOISE = 0.05  # whole-block ratios within ±5 % count as parity (run-to-run spread on a shared machine)


def fused_backends(op: str, device: str) -> list[str]:
    """Compiled backends only: the Triton interpreter on CPU is a correctness tool, not a fast path."""
    names = ["cpu"] if device == "cpu" else ["cuda", "triton"]
    return [b for b in names if registry.is_available(op, b, device)]


def compare(fused, unfused, device: str, repeats: int) -> tuple[float, float]:
    """Median ms per call of each callable over interleaved repeats (after one warm-up call each); each
    repeat times a calibrated run of back-to-back calls."""
    fns = (fused, unfused)
    for fn in fns:
        fn()
    inner = [inner_count(fn, device) for fn in fns]
    times = ([], [])
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            times[k].append(timed(fn, device, inner[k])[0])
    return statistics.median(times[0]), statistics.median(times[1])


def _row(op, piece, device, backend, batch, layout, dtype, fused_ms, unfused_ms, fused_bytes, unfused_bytes,
         what):
    return dict(op=op, piece=piece, device=device, backend=backend, batch=batch, layout=layout,
                dtype=str(dtype).replace("torch.", ""), fused_ms=round(fused_ms, 4), unfused_ms=round(unfused_ms, 4),
                speedup=round(unfused_ms / fused_ms, 3), fused_MB=round(fused_bytes / 2 ** 20, 2),
                unfused_MB=round(unfused_bytes / 2 ** 20, 2), what=what)


def _grad_call(fn, args, backend, dy):
    def call():
        leaves = [a.detach().requires_grad_(True) for a in args]
        with dhkd_kernels.use_backend(backend):
            out = fn(*leaves)
        torch.autograd.grad(out, leaves, dy)
    return call


def _random_maker(device, dtype):
    """r(*shape, scale=1.0): seeded normal tensors of one benchmark case, in its device and dtype."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
    return r


def _memory_format(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def bench_scmm(device, backend, batch, layout, dtype, repeats):
    r, fmt = _random_maker(device, dtype), _memory_format(layout)

    x = r(batch, C, HW, HW).contiguous(memory_format=fmt)
    h = C // 2
    params = [r(h, 1, 3, 3, scale=0.3), r(h, scale=0.1), r(h, 1, 3, 3, scale=0.3), r(h, scale=0.1),
              r(C, C, 1, 1, scale=C ** -0.5), r(C, scale=0.1), r(C, C, 1, 1, scale=C ** -0.5), r(C, scale=0.1)]
    G = r(batch, C, HW, HW).contiguous(memory_format=fmt)
    N, e = x.numel(), x.element_size()
    rows = []
    common = (device, backend, batch, layout, dtype)
    with torch.no_grad():
        with dhkd_kernels.use_backend(backend):
            f2 = lambda: two_scale_depthwise(x, *params[:4])  # noqa: E731
            fg = lambda: gate_residual(G, x)  # noqa: E731
            ff = lambda: dhkd_kernels.scmm_modulate(x, *params)  # noqa: E731
            u2 = lambda: scmm_reference.two_scale_depthwise(x, *params[:4])  # noqa: E731
            ug = lambda: F.relu(G) * x + x  # noqa: E731
            uf = lambda: scmm_reference.scmm_modulate_reference(x, *params)  # noqa: E731
            t2 = compare(f2, u2, device, repeats)
            tg = compare(fg, ug, device, repeats)
            tf = compare(ff, uf, device, repeats)
    rows.append(_row("scmm", "two_scale", *common, *t2, 2 * N * e, 4.5 * N * e,
                     "fused: pool+2 dw convs+upsample+concat in one pass | unfused: 6 PyTorch ops"))
    rows.append(_row("scmm", "gate", *common, *tg, 3 * N * e, 8 * N * e,
                     "fused: relu(G)*x+x in one kernel | unfused: relu, mul, add"))
    rows.append(_row("scmm", "parts", *common, t2[0] + tg[0], t2[1] + tg[1], 5 * N * e, 12.5 * N * e,
                     "two_scale + gate: everything of SCMM except the library 1×1 convs"))
    rows.append(_row("scmm", "forward", *common, *tf, 9 * N * e, 16.5 * N * e,
                     "whole SCMM forward incl. the library 1×1 convs (aggr, proj) and + x"))
    dy = r(batch, C, HW, HW)
    tb = compare(_grad_call(dhkd_kernels.scmm_modulate, [x, *params], backend, dy),
                 _grad_call(dhkd_kernels.scmm_modulate, [x, *params], "reference", dy), device, max(1, repeats // 2))
    rows.append(_row("scmm", "forward+backward", *common, *tb, float("nan"), float("nan"),
                     "whole SCMM forward and backward (all gradients)"))
    return rows


def bench_fccm(device, backend, batch, layout, dtype, repeats):
    r, fmt = _random_maker(device, dtype), _memory_format(layout)

    x = r(batch, C, HW, HW).contiguous(memory_format=fmt)
    params = [r(C, C, 4, 4, scale=0.25 / C ** 0.5), r(C, scale=0.1), r(HIDDEN, C, 3, 3, scale=1 / (3 * C ** 0.5)),
              r(HIDDEN, scale=0.1), r(C, HIDDEN, 1, 1, scale=HIDDEN ** -0.5), r(C, scale=0.1)]
    z = r(batch, C, HW // 2, HW // 2).contiguous(memory_format=fmt)
    hmap = r(batch, HIDDEN, HW // 4, HW // 4).contiguous(memory_format=fmt)
    M, K, e = z.numel(), hmap.numel(), z.element_size()
    b_down, b_mix = params[1], params[3]
    common = (device, backend, batch, layout, dtype)
    rows = []
    with torch.no_grad():
        with dhkd_kernels.use_backend(backend):
            tp = compare(lambda: fccm_pool_relu(z, b_down), lambda: fccm_reference.pool_relu_reference(z, b_down),
                         device, repeats)
            tg = compare(lambda: fccm_bias_gelu(hmap, b_mix), lambda: fccm_reference.bias_gelu_reference(hmap, b_mix),
                         device, repeats)
            tf = compare(lambda: dhkd_kernels.fccm_forward(x, *params), lambda: fccm_reference.fccm_reference(x, *params),
                         device, repeats)
    rows.append(_row("fccm", "pool_relu", *common, *tp, 1.25 * M * e, 3.75 * M * e,
                     "fused: +bias, maxpool 2×2, ReLU | unfused: add, max_pool2d, relu"))
    rows.append(_row("fccm", "bias_gelu", *common, *tg, 2 * K * e, 4 * K * e,
                     "fused: +bias, GELU (erf) | unfused: add, gelu"))
    if backend in fccm_ops._FUSED_GELU_BACKENDS:
        parts = (tp[0] + tg[0], (1.25 * M + 2 * K) * e, "pool_relu + bias_gelu fused")
    else:  # what fccm_forward runs here: the fused pool_relu, and the library's bias+GELU (faster there)
        parts = (tp[0] + tg[1], (1.25 * M + 4 * K) * e, "pool_relu fused + bias_gelu by the library")
    rows.append(_row("fccm", "parts", *common, parts[0], tp[1] + tg[1], parts[1], (3.75 * M + 4 * K) * e,
                     f"{parts[2]} (as fccm_forward runs them): everything of FCCM except the library convs"))
    rows.append(_row("fccm", "forward", *common, *tf, float("nan"), float("nan"),
                     "whole FCCM forward: library convs (bias-free where fused) + fused parts vs reference"))
    dy = r(batch, C, HW // 4, HW // 4)
    tb = compare(_grad_call(dhkd_kernels.fccm_forward, [x, *params], backend, dy),
                 _grad_call(dhkd_kernels.fccm_forward, [x, *params], "reference", dy), device, max(1, repeats // 2))
    rows.append(_row("fccm", "forward+backward", *common, *tb, float("nan"), float("nan"),
                     "whole FCCM forward and backward (all gradients)"))
    return rows


def copy_bandwidth(device: str, megabytes: int = 256) -> float:
    """Bytes per millisecond a plain tensor copy reaches on ``device`` in this run (read + write counted):
    the bytes-moved bound of a memory-bound kernel is its byte count divided by this."""
    src = torch.empty(megabytes * 2 ** 20 // 4, device=device).normal_()
    dst = torch.empty_like(src)
    ms, _ = compare(lambda: dst.copy_(src), lambda: None, device, 5)
    return 2 * src.numel() * 4 / ms


def add_bounds(rows: list[dict], bandwidth: dict[str, float]) -> None:
    """Each row with a byte count gets the fused path's bytes-moved bound and its time over that bound."""
    for r in rows:
        if r["fused_MB"] == r["fused_MB"]:  # not NaN
            r["copy_GBps"] = round(bandwidth[r["device"]] / 1e6, 1)
            r["bound_ms"] = r["fused_MB"] * 2 ** 20 / bandwidth[r["device"]]
            r["fused_over_bound"] = round(r["fused_ms"] / r["bound_ms"], 2)


def run(quick: bool) -> list[dict]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        batches = [1] if quick else [1, 8]
        dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
        for batch in batches:
            repeats = (5 if quick else 15) if batch == 1 else 3
            for dtype in dtypes:
                for layout in ("nchw", "channels_last"):
                    for backend in fused_backends(scmm_ops.OP, device):
                        rows += bench_scmm(device, backend, batch, layout, dtype, repeats)
                    for backend in fused_backends(fccm_ops.OP, device):
                        rows += bench_fccm(device, backend, batch, layout, dtype, repeats)
    add_bounds(rows, {device: copy_bandwidth(device) for device in devices})
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    """Plain statements: where the fused path loses to the unfused one, and what the registry picks."""
    lines = []
    for r in rows:
        if r["speedup"] < 1.0:
            lines.append(f"SLOWER: {r['op']} {r['piece']} on {r['device']}/{r['backend']} batch {r['batch']} "
                         f"{r['layout']} {r['dtype']}: fused {r['fused_ms']:.3f} ms vs unfused {r['unfused_ms']:.3f} ms")
    for op, short in ((scmm_ops.OP, "scmm"), (fccm_ops.OP, "fccm")):
        for device in sorted({r["device"] for r in rows}):
            chosen = registry.choose(op, torch.device(device))
            lines.append(f"registry default for {op} on {device}: {chosen} "
                         f"(preference {registry.ops()[op].preference.get(device)})")
            for r in rows:  # the decision rests on the whole-block forward, in both layouts the model runs in
                if (r["op"], r["piece"], r["device"], r["backend"]) == (short, "forward", device, chosen):
                    verdict = ("prefer the reference here" if r["speedup"] < 1 - NOISE else
                               "keep it" if r["speedup"] > 1 + NOISE else "parity within noise: keep it")
                    lines.append(f"  {short} forward {r['layout']} batch {r['batch']} {r['dtype']}: fused {chosen} "
                                 f"is {r['speedup']:.2f}x the reference -> {verdict}")
    for device in sorted({r["device"] for r in rows}):
        chosen = registry.choose(fccm_ops.OP, torch.device(device))
        how = ("the fused bias+GELU kernel" if chosen in fccm_ops._FUSED_GELU_BACKENDS
               else "the library's conv-with-bias + GELU (the fused bias+GELU kernel loses there)")
        lines.append(f"fccm_forward on {device} ({chosen}) runs {how}")
    return lines


def print_table(rows: list[dict]) -> None:
    head = f"{'op':5} {'piece':17} {'dev':4} {'backend':7} {'B':>2} {'layout':13} {'dtype':8} " \
           f"{'fused ms':>9} {'unfused ms':>10} {'speedup':>7} {'fused MB':>8} {'unfused MB':>10} {'x bound':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['op']:5} {r['piece']:17} {r['device']:4} {r['backend']:7} {r['batch']:>2} {r['layout']:13} "
              f"{r['dtype']:8} {r['fused_ms']:9.3f} {r['unfused_ms']:10.3f} {r['speedup']:7.2f} "
              f"{r['fused_MB']:8.1f} {r['unfused_MB']:10.1f} {r.get('fused_over_bound', float('nan')):7.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, fewer repeats")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch and the OpenMP kernels (default: PyTorch's default); one "
                             "thread gives steadier numbers on a shared, loaded machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # the kernels share PyTorch's OpenMP runtime
    kept = keep_freed_memory()  # outputs reuse freed memory: time the kernels, not first-touch page faults
    load_before = os.getloadavg()
    rows = run(args.quick)
    print(__doc__.split("\n\n")[1].split("Rows:")[0].rstrip())
    print_table(rows)
    notes = verdicts(rows)
    print("\n".join(notes))
    write_results("kernels_fused", rows, quick=args.quick, load_before=load_before, freed_memory_kept=kept,
                  out=args.out, notes=notes)


if __name__ == "__main__":
    main()
