"""Safetensors weight files: reading with clear errors, the finiteness check, and whole DHKD model files.

Nothing pickled is ever loaded here. Every floating-point tensor read through :func:`read_safetensors`
(``check_finite=True``) or :func:`load_model` is checked for NaN/Inf, so broken weights fail at load time,
naming the file and the tensor, instead of giving NaN scores later.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .atomic import atomic_write


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise :class:`WeightsFileError` naming ``path`` and the first tensor holding NaN or Inf."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsFileError(f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) of "
                                   f"{t.numel()}; the file is corrupt or comes from a diverged training")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) to a safetensors file atomically."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike, check_finite_values: bool = True
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a clear error for a missing, corrupt or
    non-finite file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsFileError(f"{path}: not a valid safetensors file, truncated or corrupt ({exc})") from exc
    if check_finite_values:
        check_finite(tensors, path)
    return tensors, metadata


def save_model(model, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Weights and buffers (teacher statistics, map quantiles) plus the model config as metadata."""
    meta = {"format": "dhkd-model", "config": json.dumps(model.config.to_dict())}
    if extra:
        meta["extra"] = json.dumps(extra)
    return save_safetensors(model.state_dict(), path, meta)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a :class:`dhkd.models.DHKD` from a file written by :func:`save_model`, or from a training run
    folder (its ``model.safetensors``)."""
    from dhkd.models import DHKD, DHKDConfig

    if Path(path).is_dir():
        path = Path(path) / "model.safetensors"
    tensors, meta = read_safetensors(path)
    if meta.get("format") != "dhkd-model" or "config" not in meta:
        raise WeightsFileError(f"{path} is not a dhkd model file (no dhkd-model metadata); for teacher weights "
                               f"use dhkd.persistence.load_teacher")
    model = DHKD(DHKDConfig.from_dict(json.loads(meta["config"])))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsFileError(f"{path} does not match its config: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise WeightsFileError(f"{path} does not match its config: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    return model.to(map_location)
