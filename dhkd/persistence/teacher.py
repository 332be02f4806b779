"""Reading and writing teacher (PDN) weight files (re-exported by :mod:`dhkd.models`).

:func:`load_teacher` accepts every public layout of EfficientAD teacher weights:

* nelson1425/EfficientAD ``teacher_{small,medium}.pth``: state dict of an ``nn.Sequential`` whose convs
  sit at indices 0,3,6,8 (small) or 0,3,6,8,10,12 (medium);
* anomalib's ``pretrained_teacher_{small,medium}.pth``: the same tensors under ``conv1`` … ``conv6``,
  possibly with a prefix (``teacher.``, ``model.teacher.``), also inside a Lightning checkpoint's
  ``state_dict`` entry;
* this package's own ``convs.N`` keys, in ``.pth``/``.pt`` or in ``.safetensors`` files written by
  :func:`save_teacher` (which carry metadata: size, backbone, steps, …).

Pickle files are read with ``torch.load(weights_only=True)`` only, so a file cannot run code on load.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import atomic_write
from .weights import WeightsFileError, read_safetensors

# Sequential indices of the convolutions in EfficientAD's get_pdn_small / get_pdn_medium.
_SEQUENTIAL_CONV_INDEX = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}
# Output channels of the first conv: tells the sizes apart even when the number of convs does not.
_FIRST_CONV_OUT = {"small": 128, "medium": 256}

# Key patterns, tried in this order: ours (convs.N), anomalib (convN, 1-based), nn.Sequential index (N).
_KEY_SCHEMES = tuple((scheme, re.compile(r"^(?P<prefix>(?:.*\.)?)" + body + r"(?P<idx>\d+)\.(?P<param>weight|bias)$"))
                     for scheme, body in (("ours", r"convs\."), ("anomalib", "conv"), ("seq", "")))


class TeacherFileError(ValueError):
    """A teacher weight file that cannot be used; the message names the file and the problem."""


def _read_tensors(path: Path) -> tuple[dict, dict]:
    """Return (mapping read from the file, safetensors metadata or {})."""
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path}: no such file")
    if path.suffix == ".safetensors":  # (values are checked for NaN/Inf after the keys are mapped)
        try:
            return read_safetensors(path, check_finite_values=False)
        except WeightsFileError as e:
            raise TeacherFileError(f"teacher weights {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, or pickled objects refused by weights_only
        raise TeacherFileError(f"teacher weights {path}: cannot be read with torch.load(weights_only=True): "
                               f"truncated or corrupt, not a PyTorch file, or pickled objects other than "
                               f"tensors ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # Lightning checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise TeacherFileError(f"teacher weights {path}: expected a state dict (a non-empty mapping of "
                               f"names to tensors), found {type(obj).__name__}")
    return obj, {}


def _select_teacher_group(sd: dict, path: Path) -> tuple[str, str, dict[int, dict[str, torch.Tensor]]]:
    """Find the conv tensors of one PDN among the keys; return (prefix, scheme, {key index: {param: t}})."""
    groups: dict[tuple[str, str], dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in sd.items():
        for scheme, pattern in _KEY_SCHEMES:
            m = pattern.match(str(key))
            if m:
                groups.setdefault((m.group("prefix"), scheme), {}).setdefault(int(m.group("idx")), {})[
                    m.group("param")] = value
                break
    if not groups:
        sample = ", ".join(list(map(str, sd))[:5])
        raise TeacherFileError(f"teacher weights {path}: no PDN convolution keys found (expected "
                               f"'0.weight', 'conv1.weight' or 'convs.0.weight', possibly with a prefix; "
                               f"found e.g. {sample})")
    if len(groups) > 1:
        teacher_groups = {g: v for g, v in groups.items() if g[0].endswith("teacher.")}
        if len(teacher_groups) != 1:
            names = ", ".join(sorted(repr(p) for p, _ in groups))
            raise TeacherFileError(f"teacher weights {path}: several sets of convolution keys (prefixes "
                                   f"{names}); cannot tell which one is the teacher")
        groups = teacher_groups
    (prefix, scheme), convs = next(iter(groups.items()))
    matched = {f"{prefix}{'convs.' if scheme == 'ours' else 'conv' if scheme == 'anomalib' else ''}{i}.{p}"
               for i, params in convs.items() for p in params}
    unexpected = sorted(str(k) for k in sd if str(k).startswith(prefix) and str(k) not in matched)
    if unexpected:
        raise TeacherFileError(f"teacher weights {path}: unexpected keys {unexpected[:8]}")
    return prefix, scheme, convs


def _conv_positions(scheme: str, convs: dict, size: str) -> dict[int, int]:
    """Map each key index of the chosen scheme to the conv's position in PDN.convs."""
    if scheme == "ours":
        return {i: i for i in convs}
    if scheme == "anomalib":
        return {i: i - 1 for i in convs}
    order = _SEQUENTIAL_CONV_INDEX[size]
    return {i: order.index(i) if i in order else -1 - i for i in convs}


def _looks_like(convs: dict) -> str | None:
    """The PDN size whose layout these convs have (by count and first conv width), or None."""
    n = len(convs)
    first = convs[min(convs)].get("weight")
    for size, seq in _SEQUENTIAL_CONV_INDEX.items():
        if n == len(seq) and isinstance(first, torch.Tensor) and first.ndim == 4 \
                and first.shape[0] == _FIRST_CONV_OUT[size]:
            return size
    return None


def _to_pdn_state(sd: dict, path: Path, size: str) -> tuple[dict[str, torch.Tensor], int]:
    _, scheme, convs = _select_teacher_group(sd, path)
    guess = _looks_like(convs)
    if guess is not None and guess != size:
        raise TeacherFileError(f"teacher weights {path}: the file looks like a PDN-{guess} teacher "
                               f"({len(convs)} convolutions), but size={size!r} was requested; "
                               f"load it with size={guess!r}")
    positions = _conv_positions(scheme, convs, size)
    n_convs = len(_SEQUENTIAL_CONV_INDEX[size])
    state = {}
    for idx, params in convs.items():
        pos = positions[idx]
        if not 0 <= pos < n_convs:
            raise TeacherFileError(f"teacher weights {path}: convolution key index {idx} does not exist in "
                                   f"a PDN-{size}")
        for p, t in params.items():
            if not isinstance(t, torch.Tensor):
                raise TeacherFileError(f"teacher weights {path}: value of conv {idx} {p} is "
                                       f"{type(t).__name__}, not a tensor")
            state[f"convs.{pos}.{p}"] = t
    last = state.get(f"convs.{n_convs - 1}.weight")
    out_channels = last.shape[0] if isinstance(last, torch.Tensor) and last.ndim == 4 else 384
    return state, out_channels


def load_teacher(path: str | os.PathLike, size: str = "medium", padding: bool = True):
    """Load teacher weights from ``path`` into a frozen :class:`PDN` (eval mode, no gradients).

    ``size`` is ``"small"`` or ``"medium"``; ``padding`` only changes the output size (64×64 vs 56×56
    at 256²). The file's safetensors metadata, if any, is kept in ``teacher.metadata``. Raises
    :class:`TeacherFileError` (a ``ValueError``) naming the file for any unusable file.
    """
    from dhkd.models.teacher import PDN  # imported on use: importing the models loads the kernel extensions

    if size not in _SEQUENTIAL_CONV_INDEX:
        raise ValueError(f"teacher size must be 'small' or 'medium', got {size!r}")
    path = Path(path)
    sd, metadata = _read_tensors(path)
    state, out_channels = _to_pdn_state(sd, path, size)
    teacher = PDN(size=size, out_channels=out_channels, padding=padding)
    expected = teacher.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise TeacherFileError(f"teacher weights {path}: missing {missing} for a PDN-{size}")
    for k, t in state.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise TeacherFileError(f"teacher weights {path}: {k} has shape {tuple(t.shape)}, a PDN-{size} "
                                   f"needs {tuple(expected[k].shape)}")
        if not t.is_floating_point():
            raise TeacherFileError(f"teacher weights {path}: {k} has dtype {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise TeacherFileError(f"teacher weights {path}: {k} contains NaN or infinite values")
    teacher.load_state_dict({k: t.float() for k, t in state.items()}, strict=True)
    teacher.metadata = metadata
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def save_teacher(module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``module``'s weights to a safetensors file atomically (temporary file, then rename).

    The metadata always records ``format``, ``size``, ``padding`` and ``out_channels``; values of
    ``metadata`` that are not strings are stored as JSON.
    """
    from dhkd.models.teacher import PDN

    if not isinstance(module, PDN):
        raise TypeError(f"save_teacher expects a PDN, got {type(module).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"teacher file {path}: the name must end in .safetensors")
    meta = {"format": "dhkd-pdn", "size": module.size, "padding": json.dumps(module.padding),
            "out_channels": str(module.out_channels)}
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path

