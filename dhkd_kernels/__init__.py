"""dhkd_kernels: the op surface of DHKD's kernels.

Each op has a plain-PyTorch reference beside its C++ CPU, CUDA and Triton backends; the backend is chosen
per call by device and availability (see :mod:`dhkd_kernels.registry`), overridable with the
``DHKD_BACKEND`` environment variable or :func:`use_backend`.
"""
from __future__ import annotations

import importlib.util

import torch

from . import _ext, registry
from .registry import use_backend
from .fccm import fccm_forward
from .scmm import scmm_modulate
from .selective_scan import selective_scan
from .ss2d import ss2d_scan

_ext.load_all()

__version__ = "0.1.0"
__all__ = ["backends", "fccm_forward", "scmm_modulate", "selective_scan", "ss2d_scan", "use_backend"]


def backends() -> dict:
    """What was built, what is usable on this machine, and which backend each op picks per device."""
    built = {}
    for name in ("_cpu", "_cuda"):
        mod = _ext.load(name)
        built[name] = "built" if mod is not None else _ext.error(name)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ops = {}
    for op in registry.ops():
        ops[op] = {dev: {"available": registry.available_backends(op, dev), "default": registry.choose(op, torch.device(dev))}
                   for dev in devices}
    cpu = _ext.load("_cpu")
    return {
        "extensions": built,
        "triton": importlib.util.find_spec("triton") is not None,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": cpu.num_threads() if cpu is not None else None,
        "requested": registry.requested_backend(),
        "ops": ops,
    }
