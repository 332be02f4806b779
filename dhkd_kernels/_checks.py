"""Input validation shared by the public ops: clear errors naming the argument and the problem."""
from __future__ import annotations

import torch

IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, t: torch.Tensor, shape: tuple, dtypes=None, device: torch.device | None = None) -> None:
    """``shape`` entries are ints or None (any size)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
