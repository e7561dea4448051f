"""Cubic-spline zoom exactly as the original: ``scipy.ndimage.zoom`` with its defaults."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

Scale = tuple[float, float, float]


def parse_scale(value: str | float | Sequence[float]) -> Scale:
    """``2``, ``"2"``, ``"2,2,2.5"`` or ``(2, 2, 2.5)`` -> per-axis (x, y, z) factors.

    Raises:
      ValueError: not numbers, not 1 or 3 of them, or not finite and positive.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            factors = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{value!r} is not a number or three comma-separated numbers") \
                from None
    elif isinstance(value, (int, float)):
        factors = [float(value)]
    else:
        factors = [float(v) for v in value]
    if len(factors) == 1:
        factors *= 3
    if len(factors) != 3:
        raise ValueError(f"{len(factors)} factors given, expected 1 or 3 (x, y, z)")
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"factors must be finite and positive, got {factors}")
    return (factors[0], factors[1], factors[2])


def zoomed_shape(shape: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """Output shape of ``scipy.ndimage.zoom``: ``round(n * s)`` per axis."""
    return tuple(int(round(n * s)) for n, s in zip(shape, scale))


def zoom(volume: np.ndarray, scale: Sequence[float], order: int = 3) -> np.ndarray:
    """Spline zoom of an (x, y, z) array: ``scipy.ndimage.zoom(volume, scale, order=order)``.

    Output dtype follows the input (the original zoomed float32 arrays).
    """
    return scipy.ndimage.zoom(volume, tuple(scale), order=order)
