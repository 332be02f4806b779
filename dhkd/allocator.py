"""Keep freed heap memory in the process so that large CPU tensors reuse it (glibc only).

glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a fresh ``mmap`` and
unmaps it on free, so each forward pass touches its large activations for the first time again: one page
fault per 4 KiB. On the 2-core CI-class VM that made a 50 MB output cost ~20 ms of faults for a 6 ms kernel
(SCMM two-scale branch at batch 8) and ~10 ms of a 300 ms DHKD paper forward. PyTorch's CPU tuning guides
recommend jemalloc/tcmalloc for the same reason; this is the no-dependency equivalent for inference
processes (``dhkd predict``, ``dhkd evaluate``, ``dhkd benchmark`` and the kernel benchmarks call it).
The cost: the process keeps its peak heap size until it exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the reusable heap
_TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap top back to the OS


def keep_freed_memory() -> bool:
    """Make glibc reuse freed memory for large allocations; True when set, False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
