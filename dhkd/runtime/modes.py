"""Execution modes of a detector (precision, memory layout, compilation, CUDA graphs) and the runner that
times one call: host tensor → device → detector → anomaly map and score back on the host."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import dhkd_kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Mode:
    """How a detector runs. Reduced precision converts the weights (no autocast: the fused ops require
    their inputs and weights in one dtype); the SS2D scan computes in fp32 internally either way."""

    name: str
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False

    def to_dict(self) -> dict:
        """The mode as a plain dict (for results files)."""
        return asdict(self)


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("eager"),
    Mode("channels_last", channels_last=True),
    Mode("compile", channels_last=True, compile=True),
    Mode("bf16", "bf16", channels_last=True),
    Mode("bf16-compile", "bf16", channels_last=True, compile=True),
    Mode("fp16", "fp16", channels_last=True),
    Mode("fp16-compile", "fp16", channels_last=True, compile=True),
    Mode("cudagraph", cuda_graph=True),
    Mode("fp16-cudagraph", "fp16", channels_last=True, cuda_graph=True),
)}


def cpu_flags() -> set[str]:
    """The processor's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_cpu_dtypes() -> dict[str, bool]:
    """Whether the CPU has native bf16 / fp16 arithmetic (AVX512-BF16 or AMX; AVX512-FP16 or AMX-FP16)."""
    flags = cpu_flags()
    return {"bf16": bool(flags & {"avx512_bf16", "amx_bf16"}), "fp16": bool(flags & {"avx512_fp16", "amx_fp16"})}


def unsupported_reason(mode: Mode, device: torch.device) -> str | None:
    """Why ``mode`` cannot (or should not) run on ``device``, or None when it can."""
    if device.type == "cpu":
        if mode.cuda_graph:
            return "CUDA graphs need a GPU"
        if mode.dtype != "fp32" and not native_cpu_dtypes()[mode.dtype]:
            return f"this CPU has no native {mode.dtype} arithmetic"
    elif device.type == "cuda" and mode.dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    return None


def _compilable(mode: Mode) -> bool:
    return mode.compile and not mode.cuda_graph


class Runner:
    """One detector in one mode on one device; ``runner(x_host)`` is the timed call.

    ``backend`` forces a ``dhkd_kernels`` backend (``"reference"`` = plain PyTorch ops) or None for the
    automatic choice. The module is copied, so the caller's module is never changed.
    """

    def __init__(self, module: nn.Module, mode: Mode, device: torch.device, backend: str | None = None):
        reason = unsupported_reason(mode, device)
        if reason:
            raise ValueError(f"mode {mode.name!r} cannot run on {device}: {reason}")
        self.mode, self.device, self.backend = mode, device, backend
        self.dtype = DTYPES[mode.dtype]
        self.memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
        module = copy.deepcopy(module).to(device=device, dtype=self.dtype).eval()
        if mode.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        # freezing: the weights are constants at inference, so inductor folds them and fuses the post-ops
        self.fn = torch.compile(module, dynamic=False, options={"freezing": True}) if _compilable(mode) else module
        self._graph = None
        self.first_call_s: float | None = None

    def prepare(self, x_host: torch.Tensor) -> torch.Tensor:
        """The host input on the runner's device, in its dtype and memory format."""
        x = x_host.to(self.device, non_blocking=False)
        return x.to(self.dtype).contiguous(memory_format=self.memory_format)

    def _capture(self, x_host: torch.Tensor) -> None:
        self._static_x = self.prepare(x_host)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up outside the graph (allocations, algorithm choice)
                self.fn(self._static_x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self.fn(self._static_x)

    @torch.no_grad()
    def __call__(self, x_host: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with dhkd_kernels.use_backend(self.backend):
            if self.mode.cuda_graph:
                if self._graph is None or self._static_x.shape != x_host.shape:
                    self._capture(x_host)
                self._static_x.copy_(x_host.to(self.dtype).contiguous(memory_format=self.memory_format),
                                     non_blocking=False)
                self._graph.replay()
                amap, score = self._static_out
            else:
                amap, score = self.fn(self.prepare(x_host))
            return amap.float().cpu(), score.float().cpu()
