"""Seeded hold-out of part of train/good as the validation split (datasets without a validation folder)."""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

from .common import DatasetError

T = TypeVar("T")
HOLDOUT_FRACTION = 0.1


def holdout_split(items: Sequence[T], fraction: float = HOLDOUT_FRACTION, seed: int = 0,
                  what: str = "train/good") -> tuple[list[T], list[T]]:
    """Split ``items`` (in a stable order) into (kept, held_out): round(fraction * n) items, at least one,
    drawn with ``numpy.random.default_rng(seed)``. Both parts keep the input order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
    n = len(items)
    if n < 2:
        raise DatasetError(f"{what} has {n} image(s); at least 2 are needed to hold out a validation split")
    n_held = min(n - 1, max(1, int(round(fraction * n))))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_held]] = True
    return ([x for x, h in zip(items, held) if not h], [x for x, h in zip(items, held) if h])


def select_split(split: str, train: Sequence[T], test: Sequence[T], seed: int,
                 fraction: float = HOLDOUT_FRACTION, what: str = "train/good") -> list[T]:
    """train -> train minus the hold-out; validation -> the hold-out; test -> test."""
    if split == "test":
        return list(test)
    kept, held = holdout_split(train, fraction, seed, what)
    return kept if split == "train" else held
