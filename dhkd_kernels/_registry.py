"""Backend choice: the one place that decides which implementation of an op runs.

Every op has a plain-PyTorch ``reference`` implementation and may have ``cpu`` (C++), ``cuda`` and
``triton`` ones. Per call, the backend is the one requested (``use_backend`` context manager, else the
``DHKD_BACKEND`` environment variable) or, by default, the first available one in the op's preference
list for the input's device. An explicit request that cannot run is an error, never a silent fallback.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
# Default order per device type: compiled kernels first, the reference last.
DEFAULT_PREFERENCE = {"cpu": ["cpu", "reference"], "cuda": ["cuda", "triton", "reference"]}


@dataclass
class OpBackends:
    """Which backends an op has, where each can run, and the default order per device type."""

    name: str
    available: dict[str, Callable[[str], bool]] = field(default_factory=dict)  # backend -> f(device_type)
    preference: dict[str, list[str]] = field(default_factory=dict)  # device type -> ordered backends


_ops: dict[str, OpBackends] = {}
_local = threading.local()


def register_op(name: str, preference: dict[str, list[str]]) -> OpBackends:
    op = _ops.setdefault(name, OpBackends(name))
    op.preference = {device: list(order) for device, order in preference.items()}  # own copy per op
    op.available.setdefault("reference", lambda device_type: True)
    return op


def register_backend(op: str, backend: str, available: Callable[[str], bool]) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _ops[op].available[backend] = available


def triton_available(device_type: str) -> bool:
    """Triton runs compiled on a GPU, or interpreted on CPU tensors when TRITON_INTERPRET=1."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def register_kernel_backends(op: str, symbol: str) -> None:
    """The usual backends of an op: C++ ``cpu`` and ``cuda`` when their module binds ``symbol``, and Triton."""
    from . import _ext

    register_backend(op, "cpu", lambda dev: dev == "cpu" and _ext.has("_cpu", symbol))
    register_backend(op, "cuda", lambda dev: dev == "cuda" and torch.cuda.is_available()
                     and _ext.has("_cuda", symbol))
    register_backend(op, "triton", triton_available)


def backend_module(package: str, backend: str):
    """An op's backend implementation: the module ``<package>.<backend>`` (imported on first use)."""
    return importlib.import_module(f"{package}.{backend}")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force a backend (or None for the automatic choice) for every op called inside the block."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def requested_backend() -> str | None:
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("DHKD_BACKEND", "").strip().lower()
    if env in ("", "auto"):
        return None
    if env not in BACKENDS:
        raise ValueError(f"DHKD_BACKEND={env!r} is not one of {BACKENDS} or 'auto'")
    return env


def is_available(op: str, backend: str, device_type: str) -> bool:
    check = _ops[op].available.get(backend)
    return bool(check and check(device_type))


def choose(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` for tensors on ``device`` in the current context."""
    device_type = device.type
    want = requested_backend()
    if want is not None:
        if not is_available(op, want, device_type):
            raise RuntimeError(
                f"backend {want!r} was requested for {op} but cannot run on {device_type} tensors here "
                f"(available: {available_backends(op, device_type)})"
            )
        return want
    for backend in _ops[op].preference.get(device_type, ["reference"]):
        if is_available(op, backend, device_type):
            return backend
    return "reference"


def available_backends(op: str, device_type: str) -> list[str]:
    return [b for b in BACKENDS if is_available(op, b, device_type)]


def ops() -> dict[str, OpBackends]:
    return dict(_ops)
