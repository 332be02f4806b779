"""Transitional: the former private registry API on top of :mod:`dhkd_kernels.registry`.

Only for op modules not yet moved to :func:`dhkd_kernels.registry.register_op`; removed once none is left.
"""
from __future__ import annotations

import importlib

from .registry import (BACKENDS, DEFAULT_PREFERENCE, Op, available_backends, choose, compiled_available,  # noqa: F401
                       is_available, ops, requested_backend, triton_available, use_backend, _ops)


def register_op(name: str, preference: dict[str, list[str]]) -> Op:
    op = _ops.setdefault(name, Op(name, package="", protocol=None))
    op.preference = {device: list(order) for device, order in preference.items()}
    op.available.setdefault("reference", lambda device_type: True)
    return op


def register_kernel_backends(op: str, symbol: str) -> None:
    for backend in ("cpu", "cuda"):
        _ops[op].available[backend] = compiled_available(backend, symbol)
    _ops[op].available["triton"] = triton_available


def backend_module(package: str, backend: str):
    return importlib.import_module(f"{package}.{backend}")
