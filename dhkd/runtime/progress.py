"""Progress output for long loops (evaluation, calibration, export): a bar on stderr when it is a terminal,
nothing otherwise (logs and pipes stay clean)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def enabled() -> bool:
    """Whether progress is shown: stderr is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """``iterable`` wrapped in a progress bar on stderr (left in place when not a terminal)."""
    if not enabled():
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


class Stages:
    """Log lines ``<what>: <stage> ... done in 12.3 s`` on stderr for a job made of a few long steps."""

    def __init__(self, what: str, enabled_: bool | None = None):
        self.what = what
        self.enabled = enabled() if enabled_ is None else enabled_
        self.t0 = time.perf_counter()

    def __call__(self, stage: str) -> None:
        """Report that ``stage`` starts now, with the time spent so far."""
        if self.enabled:
            print(f"{self.what}: {stage} ({time.perf_counter() - self.t0:.1f} s elapsed)", file=sys.stderr,
                  flush=True)
