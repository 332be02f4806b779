"""Where benchmark scripts write their JSON, and the machine facts every result file records."""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
from pathlib import Path

import torch

import dhkd_kernels

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(prefix: str, rows: list[dict], *, quick: bool, load_before: tuple, freed_memory_kept: bool,
                  out: Path | None = None,
                  **extra) -> Path:
    """Write ``{"meta": ..., "rows": rows, **extra}`` to ``results/<prefix>_<date>_<host>.json`` (or ``out``)."""
    now = datetime.datetime.now()
    host = socket.gethostname().split(".")[0]
    out = out or RESULTS / f"{prefix}_{now:%Y%m%d}_{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(date=now.isoformat(timespec="seconds"), host=host, machine=platform.machine(),
                processor=platform.processor(), torch=torch.__version__, threads=torch.get_num_threads(),
                load_average_before=load_before, load_average_after=os.getloadavg(), quick=quick,
                backends=dhkd_kernels.backends(), freed_memory_kept=freed_memory_kept)
    out.write_text(json.dumps(dict(meta=meta, rows=rows, **extra), indent=1, default=str))
    print(f"wrote {out}")
    return out


def add_speedups(rows: list[dict], baselines: dict[str, float | None]) -> None:
    """Adds to each row its forward speed-up over every baseline given in forward ms (``<name>_fwd_ms``,
    ``fwd_speedup_vs_<name>``; a None baseline is left out) and, where a row of backend "reference" exists, its
    forward and forward+backward speed-ups over that row."""
    ref = next((r for r in rows if r["backend"] == "reference"), None)
    for r in rows:
        for name, ms in baselines.items():
            if ms is not None:
                r[f"{name}_fwd_ms"] = ms
                r[f"fwd_speedup_vs_{name}"] = ms / r["fwd_ms"]
        if ref is not None:
            r["fwd_speedup_vs_reference"] = ref["fwd_ms"] / r["fwd_ms"]
            both = ref["fwd_bwd_ms"] is not None and r["fwd_bwd_ms"] is not None
            r["fwd_bwd_speedup_vs_reference"] = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"] if both else None


def fmt(v, spec: str) -> str:
    """``v`` formatted with ``spec`` for a table cell, "-" for None."""
    return "-" if v is None else format(v, spec)
