"""EfficientAD-M, the latency peer of ``dhkd benchmark``: parameter counts and a standalone timing.

The model lives in :mod:`dhkd.benchmark.efficientad` so that the packaged benchmark can use it; this
script times it alone the way EfficientAD's own benchmark does (batch 1, 256², host → device → map on
the host, mean of the second half of the runs):

    nice python benchmarks/efficientad.py --runs 20 [--device cuda --half]
"""
import argparse
import time

import torch

from dhkd.benchmark.efficientad import EfficientADM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="total runs; the first half is warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="fp16 weights and input (GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if args.half else torch.float32
    model = EfficientADM(256).to(device, dtype)
    for name, child in model.named_children():
        print(f"{name:12s} {sum(p.numel() for p in child.parameters()) / 1e6:7.3f} M parameters")
    times = []
    with torch.no_grad():
        for _ in range(args.runs):
            x = torch.randn(1, 3, 256, 256, dtype=dtype)
            t0 = time.perf_counter()
            amap, _ = model(x.to(device))
            amap.cpu()
            times.append(time.perf_counter() - t0)
    kept = times[len(times) // 2:]
    print(f"EfficientAD-M on {device} ({dtype}): mean of the last {len(kept)} runs "
          f"{1e3 * sum(kept) / len(kept):.1f} ms")


if __name__ == "__main__":
    main()
