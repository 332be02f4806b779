"""The one device picker of the package: ``auto`` -> the GPU when there is one, else the CPU."""
from __future__ import annotations

import torch


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """The device named by ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...); ``auto`` picks CUDA when
    available. Asking for CUDA on a machine without it is an error that says so."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested but no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was requested but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device
