"""What a benchmark result records about the machine it ran on, and the backend each op used."""
from __future__ import annotations

import datetime as dt
import os
import platform
import socket
from pathlib import Path

import torch

import dhkd_kernels
from dhkd.runtime.modes import cpu_flags, native_cpu_dtypes
from dhkd_kernels import registry

from .config import BenchmarkConfig


def environment(device: torch.device, cfg: BenchmarkConfig) -> dict:
    """Host, date, versions, CPU (model, flags, threads) or GPU, load average and the run's notes."""
    flags = cpu_flags()
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"host": socket.gethostname(), "date": dt.datetime.now().isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "cpu": cpu_model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_cpu_dtypes": native_cpu_dtypes(),
           "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                                        "avx512_vnni", "avx_vnni"}),
           "mkldnn": torch.backends.mkldnn.is_available(),
           "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "shared_machine": cfg.shared_machine, "note": cfg.note}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    return env


def op_backends(device: torch.device, backend: str | None) -> dict[str, str]:
    """Which backend each dhkd_kernels op runs on ``device`` under ``use_backend(backend)``."""
    with dhkd_kernels.use_backend(backend):
        return {op: registry.choose(op, device) for op in registry.ops()}
