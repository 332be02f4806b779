"""Loading of the compiled kernel modules and the raw-pointer calling convention.

``_cpu`` and ``_cuda`` are optional at import time: ``import dhkd_kernels`` works whichever parts were
built, and :func:`dhkd_kernels.backends` reports what is there.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
from types import ModuleType

import torch

# Must match csrc/common/dtype.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}


def load(name: str) -> ModuleType | None:
    """Return ``dhkd_kernels.<name>`` if it was built and imports, else None (the reason in :func:`error`)."""
    if name not in _modules:
        full = f"dhkd_kernels.{name}"
        if importlib.util.find_spec(full) is None:
            _modules[name] = None
            _errors[name] = "not built"
        else:
            try:
                _modules[name] = importlib.import_module(full)
            except ImportError as exc:  # e.g. libcudart missing on this machine
                _modules[name] = None
                _errors[name] = f"import failed: {exc}"
    return _modules[name]


def load_all() -> None:
    """Import every compiled module now (a failed one is recorded, not raised). Called on ``import
    dhkd_kernels`` so that backend choice inside ``torch.compile`` never traces an import."""
    for name in ("_cpu", "_cuda"):
        load(name)


def has(name: str, symbol: str) -> bool:
    """Whether module ``name`` was built, imports, and binds ``symbol``."""
    mod = load(name)
    return mod is not None and hasattr(mod, symbol)


def error(name: str) -> str | None:
    load(name)
    return _errors.get(name)


def require(name: str, symbol: str, what: str) -> ModuleType:
    """Module ``name`` if it binds ``symbol``, else a RuntimeError naming ``what`` is missing and why."""
    mod = load(name)
    if mod is None or not hasattr(mod, symbol):
        reason = error(name) or f"built without {symbol}"
        raise RuntimeError(f"{what} are not available (dhkd_kernels.{name}: {reason})")
    return mod


def dtype_code(t: torch.Tensor) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"unsupported dtype {t.dtype}; expected float32, float16 or bfloat16") from None


def ptr(t: torch.Tensor | None) -> int:
    """Raw data pointer of a tensor (0 for None)."""
    return 0 if t is None else t.data_ptr()


def stream(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an integer handle for the CUDA launchers."""
    return torch.cuda.current_stream(device).cuda_stream


def device_guard(t: torch.Tensor):
    """Make ``t``'s CUDA device current for a launch (a no-op for CPU tensors, e.g. the Triton interpreter).

    The launchers use the current device (and Triton the current device's stream), so a tensor on another
    GPU than the current one must not be launched on without this.
    """
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
