"""Checkpoints that survive a kill at any moment: generation-named tensor files and a JSON written last.

A checkpoint is a pair in one folder: ``<prefix><step>.safetensors`` (tensors: weights, optimizer moments, RNG
states) and ``<name>.json`` (everything else, plus the tensor file's name and SHA-256). Saving writes the new
tensor file under a new name, then atomically replaces the JSON (the commit point), then deletes the older
tensor files and any temporaries of interrupted writes. So the JSON on disk always names a complete tensor
file: a kill before the commit leaves the previous checkpoint, a kill after it the new one; the leftovers are
removed by the next save or by :meth:`CheckpointFiles.tidy` on resume.

The optimizer's state is split the same way by :func:`optimizer_state` / :func:`load_optimizer_state`:
tensors (Adam moments) go to the tensor file, scalars and parameter groups to the JSON.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_write_json, remove_temporaries
from .weights import WeightsFileError, read_safetensors, save_safetensors


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the files and the problem."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CheckpointFiles:
    """Where one run keeps its checkpoint: ``folder/<state>`` (JSON) and ``folder/<prefix>NNNNNNNN.safetensors``."""

    folder: Path
    state: str = "checkpoint.json"
    prefix: str = "checkpoint-"

    @property
    def state_path(self) -> Path:
        """The JSON file (the commit point of every save)."""
        return Path(self.folder) / self.state

    def tensor_name(self, step: int) -> str:
        """A fresh file name for the tensor file of ``step`` (``.N`` added when saving a step again, so the
        committed file is never overwritten)."""
        name, n = f"{self.prefix}{step:08d}.safetensors", 0
        while (Path(self.folder) / name).exists():
            n += 1
            name = f"{self.prefix}{step:08d}.{n}.safetensors"
        return name

    def generations(self) -> list[Path]:
        """Every tensor file of this checkpoint series in the folder (committed or left by a kill)."""
        pattern = re.compile(re.escape(self.prefix) + r"\d{8}(\.\d+)?\.safetensors")
        folder = Path(self.folder)
        return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name)) if folder.is_dir() else []

    def exists(self) -> bool:
        """Whether a committed checkpoint (its JSON) is present."""
        return self.state_path.is_file()

    def tidy(self, keep: str | None) -> None:
        """Remove temporaries and every tensor file but ``keep`` (the one the JSON names)."""
        remove_temporaries(self.folder)
        for p in self.generations():
            if p.name != keep:
                p.unlink(missing_ok=True)

    def save(self, step: int, tensors: dict[str, torch.Tensor], doc: dict) -> Path:
        """Write the checkpoint of ``step``: tensor file, then JSON (with ``step``, ``tensors``,
        ``tensors_sha256`` added), then clean up. Returns the JSON path."""
        name = self.tensor_name(step)
        path = save_safetensors(tensors, Path(self.folder) / name)
        atomic_write_json(self.state_path, dict(doc, step=step, tensors=name, tensors_sha256=sha256(path)))
        self.tidy(keep=name)
        return self.state_path

    def read_state(self) -> dict:
        """The JSON document, with a clear error for a truncated or foreign file."""
        path = self.state_path
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint in {self.folder}: {self.state} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not JSON: {exc}); "
                                  f"{self._good_files_hint()}") from None
        if not isinstance(doc, dict) or not {"step", "tensors", "tensors_sha256"} <= set(doc):
            raise CheckpointError(f"checkpoint {path} is not a checkpoint of this version (no step/tensors/"
                                  f"tensors_sha256 entries); {self._good_files_hint()}")
        return doc

    def load(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON document, tensors) of the committed checkpoint; leftovers of a kill are removed."""
        doc = self.read_state()
        path = Path(self.folder) / str(doc["tensors"])
        if not path.is_file():
            raise CheckpointError(f"checkpoint {self.state_path} names {path.name}, which is missing; "
                                  f"{self._good_files_hint()}")
        if sha256(path) != doc["tensors_sha256"]:
            raise CheckpointError(f"checkpoint {self.state_path} does not match {path.name} (SHA-256 differs: "
                                  f"the tensor file was changed or damaged); {self._good_files_hint()}")
        try:
            tensors, _ = read_safetensors(path)
        except WeightsFileError as exc:
            raise CheckpointError(str(exc)) from None
        self.tidy(keep=path.name)
        return doc, tensors

    def _good_files_hint(self) -> str:
        files = ", ".join(p.name for p in self.generations()) or "none"
        return f"tensor files present in {self.folder}: {files}; remove the folder to start over"


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into (tensors keyed ``<prefix><param index>.<name>``, JSON part)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, doc: dict, prefix: str = "optim.") -> None:
    """Restore what :func:`optimizer_state` split (``doc`` is its JSON part)."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in doc["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    # JSON turns tuples (Adam's betas) into lists: give them back the optimizer's own types
    groups = [{k: tuple(v) if isinstance(v, list) and isinstance(mine.get(k), tuple) else v for k, v in g.items()}
              for g, mine in zip(doc["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
