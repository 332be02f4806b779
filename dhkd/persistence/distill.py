"""Checkpoints of teacher distillation (``dhkd distill-teacher``), as a kill-safe checkpoint pair.

The folder holds ``state-<step>.safetensors`` (PDN weights, Adam moments, target statistics) and
``checkpoint.json`` (step, configuration, Adam's scalar state, the data generator's RNG state, recent losses);
see :mod:`.checkpoint` for why a kill at any moment leaves a resumable checkpoint.
"""
from __future__ import annotations

import base64
from pathlib import Path

import torch

from .checkpoint import CheckpointError, CheckpointFiles, load_optimizer_state, optimizer_state

FORMAT = "dhkd-distill-checkpoint"


def distill_checkpoint(folder: str | Path) -> CheckpointFiles:
    """The checkpoint files of a distillation checkpoint folder."""
    return CheckpointFiles(Path(folder), prefix="state-")


def save_distill_checkpoint(folder: str | Path, step: int, pdn, opt: torch.optim.Optimizer, mean: torch.Tensor,
                            std: torch.Tensor, gen: torch.Generator, state: dict) -> Path:
    """Write the checkpoint of ``step`` (``state``: JSON-able run information); returns the JSON path."""
    tensors = {f"pdn.{k}": v for k, v in pdn.state_dict().items()}
    opt_tensors, opt_doc = optimizer_state(opt, prefix="opt.")
    tensors.update(opt_tensors)
    tensors["target_mean"], tensors["target_std"] = mean, std
    doc = dict(state, format=FORMAT, optimizer=opt_doc,
               rng=base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii"))
    return distill_checkpoint(folder).save(step, tensors, doc)


def load_distill_checkpoint(folder: str | Path, pdn, opt: torch.optim.Optimizer, gen: torch.Generator):
    """Restore a checkpoint into ``pdn``, ``opt`` and ``gen``; return (JSON document, mean, std)."""
    files = distill_checkpoint(folder)
    doc, tensors = files.load()
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {files.state_path}: not a dhkd distillation checkpoint")
    try:
        pdn.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("pdn.")}, strict=True)
        load_optimizer_state(opt, tensors, doc["optimizer"], prefix="opt.")
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {files.state_path} does not fit this PDN: "
                              f"{str(exc).splitlines()[0]}") from None
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(doc["rng"])), dtype=torch.uint8))
    return doc, tensors["target_mean"], tensors["target_std"]
