"""Flush subnormal floats to zero on the CPU, so that training does not slow down tenfold as it goes on.

Subnormal (denormal) fp32 values, below 1.2e-38 in magnitude, take a slow microcode path in x86 arithmetic.
A DHKD training run produces them: Adam's first moments of weights whose gradient stays zero decay towards
them, and with them some weights. Measured on ELPV with the CPU recipe's Lnet-only model (2-core VM): 0.45 s
per step at first, 5.8 s per step after 1,600 steps, when 0.1–1 % of the weights of some convolutions and up
to 56 % of their Adam moments were subnormal; one such convolution ran 3× faster with them flushed.

:func:`flush_denormals` sets the CPU's flush-to-zero and denormals-are-zero modes (``torch.set_flush_denormal``).
The mode is per thread and a thread starts with its creator's, so it reaches the thread pools of PyTorch and
of the package's kernels only when it is set before their first parallel work: every ``dhkd`` command sets it
first thing, as does :class:`dhkd.train.Trainer`; a script of your own should call it before anything else.
The numerical effect: fp32 values below 1.2e-38 count as zero, and so do fp16 values below 6.1e-5 (fp16's
subnormals) where the CPU converts them to fp32 (the package's fp16 CPU kernels do): a process that feeds
such tiny fp16 values to the CPU kernels should not set it.
"""
from __future__ import annotations


def flush_denormals() -> bool:
    """Treat subnormal floats as zero in this thread and in every thread started after it; returns whether the
    CPU supports it (x86 with SSE3, Arm64)."""
    import torch

    return bool(torch.set_flush_denormal(True))
