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
