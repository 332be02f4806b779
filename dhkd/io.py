"""Atomic file writes and safe model weights I/O (safetensors; nothing pickled is ever loaded)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid safetensors file ({exc})") from exc


def save_model(model, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Weights and buffers (teacher statistics, map quantiles) plus the model config as metadata."""
    meta = {"format": "dhkd-model", "config": json.dumps(model.config.to_dict())}
    if extra:
        meta["extra"] = json.dumps(extra)
    atomic_save_safetensors(model.state_dict(), path, meta)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a :class:`dhkd.models.DHKD` from a file written by :func:`save_model`."""
    from dhkd.models import DHKD, DHKDConfig

    tensors, meta = read_safetensors(path)
    if meta.get("format") != "dhkd-model" or "config" not in meta:
        raise ValueError(f"{path} is not a dhkd model file (no dhkd-model metadata); for teacher weights use "
                         f"dhkd.models.load_teacher")
    model = DHKD(DHKDConfig.from_dict(json.loads(meta["config"])))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(map_location)
