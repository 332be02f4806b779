"""Subnormal floats in a weights or checkpoint file, and what they cost a convolution on this CPU.

    python benchmarks/subnormals.py --file CHECKPOINT.safetensors [--conv NAME] [--repeats 4]

Prints, per floating-point tensor holding any, how many of its values are subnormal (0 < |x| < 1.2e-38).
With ``--conv NAME`` (a 4-D weight in the file), also times a forward + backward of that convolution (stride 2,
padding 1, a random (1, C_in, 64, 64) input) in two fresh processes, without and with
``dhkd.denormals.flush_denormals()`` (the mode must be set before the thread pool starts, hence the processes),
and prints the median of ``--repeats`` timed runs after one warm-up for each, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

_TIMER = """
import json, statistics, sys, time, torch
from safetensors.torch import load_file
if {flush}:
    from dhkd.denormals import flush_denormals
    flush_denormals()
w = load_file({path!r})[{name!r}].float().requires_grad_()
x = torch.randn(1, w.shape[1], 64, 64, generator=torch.Generator().manual_seed(0))
times = []
for _ in range({repeats} + 1):
    t = time.perf_counter()
    torch.nn.functional.conv2d(x, w, stride=2, padding=1).sum().backward()
    times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times[1:])))
"""


def subnormal_counts(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """{name: (subnormal values, all values)} of the floating-point tensors that hold any subnormal value."""
    out = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            # from the bits (exponent 0, mantissa not 0): arithmetic would read them as 0 under the flush
            bits = t.float().contiguous().view(torch.int32)
            n = int((((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)).sum())
            if n:
                out[name] = (n, t.numel())
    return out


def conv_seconds(path: str, name: str, flush: bool, repeats: int) -> float:
    """Median seconds of a forward + backward of weight ``name``'s convolution, in a fresh process."""
    code = _TIMER.format(flush=flush, path=path, name=name, repeats=repeats)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.split("\n")[-2]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", required=True, help="a safetensors file (model or training checkpoint)")
    p.add_argument("--conv", help="a 4-D weight of the file to time with and without the flush")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    tensors = load_file(args.file)
    counts = subnormal_counts(tensors)
    for name, (n, total) in counts.items():
        print(f"{name} {tuple(tensors[name].shape)}: {n} of {total} subnormal ({100 * n / total:.2f} %)")
    print(f"{sum(n for n, _ in counts.values())} subnormal values in {len(counts)} of {len(tensors)} tensors")
    if args.conv:
        if args.conv not in tensors or tensors[args.conv].dim() != 4:
            p.error(f"--conv {args.conv!r} is not a 4-D weight of {args.file}")
        slow, fast = (conv_seconds(args.file, args.conv, f, args.repeats) for f in (False, True))
        print(f"conv {args.conv} forward + backward: {slow:.4f} s without the flush, {fast:.4f} s with it "
              f"({slow / fast:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
