"""Training checkpoints: model, optimizer, scheduler and every RNG state, as a kill-safe checkpoint pair.

Files (see :mod:`.checkpoint`): ``checkpoint-<step>.safetensors`` (model and Adam tensors, torch/CUDA RNG)
and ``checkpoint.json`` (step, optimizer scalars and parameter groups, scheduler, numpy/Python RNG, config).
Resuming restores all of it, so a resumed run gives bit-identical weights to an uninterrupted one.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, CheckpointFiles, load_optimizer_state, optimizer_state

# Config fields that fix the model's shape: a checkpoint written with other values cannot be resumed.
MODEL_FIELDS = ("preset", "image_size", "model_overrides")


def training_checkpoint(run_dir: str | Path) -> CheckpointFiles:
    """The checkpoint files of a training run folder."""
    return CheckpointFiles(Path(run_dir))


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, scheduler, config: dict) -> Path:
    """Write the checkpoint of ``step`` (see the module docstring); returns the JSON path."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_doc = optimizer_state(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    return training_checkpoint(run_dir).save(step, tensors, {
        "format": "dhkd-train-checkpoint",
        "optimizer": opt_doc,
        "scheduler": scheduler.state_dict(),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "rng_python": json.loads(json.dumps(random.getstate(), default=list)),
        "config": config,
    })


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a committed training checkpoint."""
    return training_checkpoint(run_dir).exists()


def load_checkpoint(run_dir: str | Path, model, optimizer, scheduler, config: dict | None = None) -> int:
    """Restore model, optimizer, scheduler and RNG states; returns the step to continue from.

    With ``config`` (the run's config as a dict), a checkpoint written for another model shape is refused
    with the differing fields named.
    """
    files = training_checkpoint(run_dir)
    doc, tensors = files.load()
    where = files.state_path
    if doc.get("format") != "dhkd-train-checkpoint":
        raise CheckpointError(f"checkpoint {where} is not a dhkd training checkpoint")
    if config is not None:
        saved = doc.get("config", {})
        diff = {k: (saved.get(k), config.get(k)) for k in MODEL_FIELDS if saved.get(k) != config.get(k)}
        if diff:
            text = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
            raise CheckpointError(f"checkpoint {where} was written for another model ({text}); resume with "
                                  f"the run's own config.yaml or use a new run folder")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_state(optimizer, tensors, doc["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {where} does not fit this model: {str(exc).splitlines()[0]}") from None
    scheduler.load_state_dict(doc["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    kind, keys, *rest = doc["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = doc["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return int(doc["step"])
