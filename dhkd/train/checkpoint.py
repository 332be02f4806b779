"""Training checkpoints: safetensors (model + optimizer tensors + RNG) and a JSON state, both atomic.

The JSON is written last and records the SHA-256 of the tensor file, so a crash between the two writes
is detected on resume instead of mixing two checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from dhkd.io import atomic_save_safetensors, atomic_write_json, read_safetensors

TENSORS = "checkpoint.safetensors"
STATE = "checkpoint.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, config: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    path = Path(run_dir) / TENSORS
    atomic_save_safetensors(tensors, path)
    np_state = np.random.get_state()
    atomic_write_json(Path(run_dir) / STATE, {
        "step": step,
        "tensors_sha256": _sha256(path),
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "rng_python": json.loads(json.dumps(random.getstate(), default=list)),
        "config": config,
    })


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / STATE).is_file()


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> int:
    """Restore model, optimizer, scheduler and RNG states; returns the step to continue from."""
    run_dir = Path(run_dir)
    state = json.loads((run_dir / STATE).read_text())
    path = run_dir / TENSORS
    if not path.is_file() or _sha256(path) != state["tensors_sha256"]:
        raise ValueError(f"checkpoint in {run_dir} is inconsistent: {TENSORS} does not match {STATE} "
                         f"(interrupted write?)")
    tensors, _ = read_safetensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    kind, keys, *rest = state["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return int(state["step"])
