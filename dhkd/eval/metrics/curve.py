"""Area under a curve up to an x limit, with linear interpolation at the limit (MVTec's evaluation rule)."""
from __future__ import annotations

import bisect

import numpy as np


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float, normalize: bool = True) -> float:
    """Trapezoid area under y(x) over [x[0], x_max]; x must be non-decreasing.

    Points with x <= x_max are integrated; when x_max is not itself a point, the partial trapezoid from the last
    point below it to x_max uses y linearly interpolated between its neighbours. Non-finite points are dropped.
    Divided by x_max when ``normalize``.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise ValueError("a curve needs at least two finite points")
    if np.any(np.diff(x) < 0):
        raise ValueError("curve x values must be non-decreasing")
    if not x[0] <= x_max <= x[-1]:
        raise ValueError(f"integration limit {x_max} is outside the curve's x range [{x[0]}, {x[-1]}]")
    correction = 0.0
    if x_max not in x:
        i = bisect.bisect(x.tolist(), x_max)
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_lim + y[i - 1]) * (x_max - x[i - 1])
    inside = x <= x_max
    x, y = x[inside], y[inside]
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)
    return area / x_max if normalize else area
