"""The backend contract and the one place that decides which implementation of an op runs.

Every op has a plain-PyTorch ``reference`` and may have ``cpu`` (C++), ``cuda`` and ``triton`` backends. A
backend is the module ``<op package>.<backend>`` and must define the functions of the op's backend protocol
(a :class:`typing.Protocol` declared beside the op, e.g. :class:`dhkd_kernels.scmm.ops.SCMMBackend`); the
registry checks that when it first loads the module. An op registers itself and its backends with one call,
:func:`register_op`, and asks :meth:`Op.backend_for` per call:

* the backend requested (the :func:`use_backend` context manager, else the ``DHKD_BACKEND`` environment
  variable) if it can run on the input's device and sizes, else an error (never a silent fallback);
* otherwise the first backend in the op's preference list for the device that is available and accepts the
  sizes;
* float64 inputs always run the reference: the kernels compute in fp32.

Size limits. A kernel backend that cannot run every shape (e.g. a CUDA kernel compiled for a maximum
``d_state``) defines, beside its protocol functions, an optional ``unsupported(**sizes) -> str | None``: the
reason it cannot run these sizes, or None. The op passes the sizes its backends may limit as keywords,
``_op.backend_for(u, d_state=N)``, and every backend's ``unsupported`` of that op takes those keywords. A
backend is asked only once it is available (so a backend that is not is never imported for the check);
automatic choice skips a backend that declines, an explicit request of one raises a ``ValueError`` naming the
op, the backend, the reason and the backends that can run the call. The compiled backends' modules are
imported when their op registers (they only wrap the compiled module), so their limits also apply while
``torch.compile`` traces the choice; a backend module not yet imported at that point (Triton's, before its
first eager use) is not asked then, since an import cannot be traced.

How to add an op or a backend is described in docs/architecture.md.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Iterator

import torch

from . import _ext

BACKENDS = ("reference", "cpu", "cuda", "triton")
KERNEL_BACKENDS = ("cpu", "cuda", "triton")
# Default order per device type: compiled kernels first, the reference last.
DEFAULT_PREFERENCE = {"cpu": ["cpu", "reference"], "cuda": ["cuda", "triton", "reference"]}
# Dtypes the kernels never see: inputs in these run the reference whatever backend was chosen.
REFERENCE_DTYPES = (torch.float64,)

Availability = Callable[[str], bool]  # device type -> whether the backend can run there


def triton_available(device_type: str) -> bool:
    """Triton runs compiled on a GPU, or interpreted on CPU tensors when TRITON_INTERPRET=1."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def compiled_available(backend: str, symbol: str) -> Availability:
    """Availability of a C++ backend: ``cpu`` or ``cuda`` when its compiled module binds ``symbol``."""
    if backend == "cpu":
        return lambda device_type: device_type == "cpu" and _ext.has("_cpu", symbol)
    if backend == "cuda":
        return lambda device_type: (device_type == "cuda" and torch.cuda.is_available()
                                    and _ext.has("_cuda", symbol))
    raise ValueError(f"{backend!r} is not a compiled backend; expected 'cpu' or 'cuda'")


@dataclass
class Op:
    """One registered op: where its backends live, what they must define, where each can run."""

    name: str
    package: str  # backends are the modules <package>.<backend>
    protocol: type | None  # the functions every kernel backend module defines (None: no kernel backends)
    available: dict[str, Availability] = field(default_factory=dict)
    preference: dict[str, list[str]] = field(default_factory=dict)  # device type -> ordered backends
    _modules: dict[str, ModuleType] = field(default_factory=dict, repr=False)

    def backend_for(self, t: torch.Tensor, **sizes: int) -> str:
        """The backend that runs this op on ``t``'s device and dtype in the current context; ``sizes`` (e.g.
        ``d_state=N``) go to the backends' ``unsupported`` (see the module docstring)."""
        if t.dtype in REFERENCE_DTYPES:
            choose(self.name, t.device)  # a request that cannot run on this device is still an error
            return "reference"
        return choose(self.name, t.device, **sizes)

    def unsupported(self, backend: str, sizes: dict[str, int]) -> str | None:
        """Why ``backend`` (already known to be available) cannot run these sizes, or None: its module's
        optional ``unsupported(**sizes)``. The reference runs everything."""
        if backend == "reference" or not sizes:
            return None
        mod = self._modules.get(backend)
        if mod is None:
            if torch.compiler.is_compiling():
                return None  # an import cannot be traced (see the module docstring)
            mod = self.implementation(backend)
        check = getattr(mod, "unsupported", None)
        return check(**sizes) if callable(check) else None

    def implementation(self, backend: str) -> ModuleType:
        """The backend module ``<package>.<backend>``, imported on first use and checked against the protocol."""
        mod = self._modules.get(backend)
        if mod is None:
            if backend not in self.available or backend == "reference":
                raise ValueError(f"{self.name} has no {backend!r} kernel backend "
                                 f"(registered: {sorted(self.available)})")
            mod = importlib.import_module(f"{self.package}.{backend}")
            missing = [name for name in _protocol_functions(self.protocol) if not callable(getattr(mod, name, None))]
            if missing:
                raise TypeError(f"backend module {mod.__name__} does not implement "
                                f"{self.protocol.__name__}: missing {', '.join(missing)}")
            self._modules[backend] = mod
        return mod


def _protocol_functions(protocol: type | None) -> list[str]:
    if protocol is None:
        return []
    return sorted(name for name, value in vars(protocol).items() if not name.startswith("_") and callable(value))


_ops: dict[str, Op] = {}
_local = threading.local()


def register_op(name: str, package: str, protocol: type | None = None, *, symbol: str | None = None,
                backends: tuple[str, ...] = KERNEL_BACKENDS,
                preference: dict[str, list[str]] | None = None) -> Op:
    """Register op ``name`` with its reference and its kernel backends, in one call.

    ``package`` holds the backend modules (``<package>.cpu``, ``.cuda``, ``.triton``), each implementing
    ``protocol``. ``backends`` names the kernel backends the op has: ``cpu``/``cuda`` are available where
    the compiled module (``_cpu``/``_cuda``) binds ``symbol``, ``triton`` where Triton runs. The reference is
    always registered. ``preference`` orders the backends per device type (default: compiled first).
    Returns the :class:`Op` the op's functions call.
    """
    unknown = [b for b in backends if b not in KERNEL_BACKENDS]
    if unknown:
        raise ValueError(f"unknown kernel backends {unknown} for {name}; expected some of {KERNEL_BACKENDS}")
    if backends and protocol is None:
        raise ValueError(f"{name} has kernel backends {backends} but no backend protocol")
    if any(b in ("cpu", "cuda") for b in backends) and symbol is None:
        raise ValueError(f"{name}: compiled backends need the symbol their module binds")
    op = Op(name, package, protocol)
    op.available["reference"] = lambda device_type: True
    for backend in backends:
        op.available[backend] = triton_available if backend == "triton" else compiled_available(backend, symbol)
    op.preference = {device: list(order) for device, order in (preference or DEFAULT_PREFERENCE).items()}
    _ops[name] = op
    for backend, module in (("cpu", "_cpu"), ("cuda", "_cuda")):
        if backend in backends and _ext.has(module, symbol):
            op.implementation(backend)  # imported now, outside any torch.compile trace: see "Size limits"
    return op


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
    """The backend forced by :func:`use_backend` or ``DHKD_BACKEND``, or None for the automatic choice."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("DHKD_BACKEND", "").strip().lower()
    if env in ("", "auto"):
        return None
    if env not in BACKENDS:
        raise ValueError(f"DHKD_BACKEND={env!r} is not one of {BACKENDS} or 'auto'")
    return env


def _op(name: str) -> Op:
    try:
        return _ops[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered: {sorted(_ops)}") from None


def is_available(op: str, backend: str, device_type: str) -> bool:
    """Whether ``backend`` of ``op`` can run on tensors of ``device_type`` on this machine."""
    check = _op(op).available.get(backend)
    return bool(check and check(device_type))


def available_backends(op: str, device_type: str) -> list[str]:
    """The backends of ``op`` that can run on ``device_type`` here, in :data:`BACKENDS` order."""
    return [b for b in BACKENDS if is_available(op, b, device_type)]


def choose(op: str, device: torch.device, **sizes: int) -> str:
    """The backend that runs ``op`` for tensors on ``device`` with these ``sizes`` in the current context
    (dtype aside: see :meth:`Op.backend_for`)."""
    device_type = device.type
    entry = _op(op)
    want = requested_backend()
    if want is not None:
        if not is_available(op, want, device_type):
            raise RuntimeError(
                f"backend {want!r} was requested for {op} but cannot run on {device_type} tensors here "
                f"(available: {available_backends(op, device_type)})"
            )
        reason = entry.unsupported(want, sizes)
        if reason is not None:
            able = [b for b in available_backends(op, device_type) if entry.unsupported(b, sizes) is None]
            raise ValueError(f"backend {want!r} was requested for {op} but cannot run these inputs: {reason} "
                             f"(backends that can: {able})")
        return want
    for backend in entry.preference.get(device_type, ["reference"]):
        if is_available(op, backend, device_type) and entry.unsupported(backend, sizes) is None:
            return backend
    return "reference"


def ops() -> dict[str, Op]:
    """Every registered op by name."""
    return dict(_ops)


def extension(name: str) -> ModuleType | None:
    """The compiled module ``dhkd_kernels.<name>`` (``"_cpu"`` or ``"_cuda"``) if built and importable."""
    return _ext.load(name)


def extension_error(name: str) -> str | None:
    """Why the compiled module ``name`` is unavailable ("not built", the import error), or None."""
    return _ext.error(name)
