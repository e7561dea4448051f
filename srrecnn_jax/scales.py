"""Scales: the one parser of a requested scale, and the rules that compare a scale with
those a model was trained for (``trained_scales`` of a model folder).

A scale is (x, y, z) zoom factors. A model's ``trained_scales`` lists numbers (isotropic
training scales) and [x, y, z] lists (anisotropic ones: thick slices, ``[1, 1, 4]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from srrecnn_jax.errors import SrrecnnError

Scale = tuple[float, float, float]


class ScaleError(SrrecnnError, ValueError):
    """A scale that is not 1 or 3 finite positive numbers: a ``SrrecnnError`` naming the
    ``scale`` parameter, and a ``ValueError`` for callers that expect one."""

    def __init__(self, message: str):
        super().__init__(message, "scale")


def parse_scale(value: str | float | Sequence[float]) -> Scale:
    """``2``, ``"2"``, ``"2,2,2.5"`` or ``(2, 2, 2.5)`` -> per-axis (x, y, z) factors.

    Raises:
      ScaleError: not numbers, not 1 or 3 of them, or not finite and positive.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            factors = [float(p) for p in parts]
        except ValueError:
            raise ScaleError(f"{value!r} is not a number or three comma-separated numbers") \
                from None
    elif isinstance(value, (int, float)):
        factors = [float(value)]
    else:
        try:
            factors = [float(v) for v in value]
        except ValueError as e:
            raise ScaleError(str(e)) from None
    if len(factors) == 1:
        factors *= 3
    if len(factors) != 3:
        raise ScaleError(f"{len(factors)} factors given, expected 1 or 3 (x, y, z)")
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ScaleError(f"factors must be finite and positive, got {factors}")
    return (factors[0], factors[1], factors[2])


def positive_number(value: Any) -> bool:
    """A finite positive int or float (not a bool), as a JSON setting holds it."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def scale_entry(value: Any) -> bool:
    """A ``trained_scales`` entry: a positive number, or an [x, y, z] list of them."""
    if isinstance(value, list):
        return len(value) == 3 and all(map(positive_number, value))
    return positive_number(value)


def untrained_scale(trained: list | None, scale) -> bool:
    """Whether the (x, y, z) ``scale`` is none the model was trained for.

    ``trained``: a model folder's ``trained_scales``. A number is an isotropic
    training scale: a request whose every factor is one of them passes (a model
    trained at 2 and 2.5 may take (2, 2, 2.5)). An [x, y, z] list is an anisotropic
    one (thick slices: [1, 1, 4]), which a request must equal, or equal once its thick
    axis is swapped into the model's (``slice_axes``: (4, 1, 1) runs as (1, 1, 4)).
    None: unknown, never warned about."""
    if not trained:
        return False
    wanted = tuple(float(s) for s in scale)
    numbers = [float(t) for t in trained if not isinstance(t, list | tuple)]
    triples = [tuple(float(v) for v in t) for t in trained if isinstance(t, list | tuple)]
    axes = slice_axes(trained, wanted)
    if axes is not None:
        wanted = tuple(wanted[i] for i in axes)
    return not (wanted in triples or (numbers and all(s in numbers for s in wanted)))


def untrained_scale_note(trained: list | None, scale) -> str | None:
    """The warning for a ``scale`` none of a model's ``trained`` scales covers
    (``untrained_scale``), or None."""
    if not untrained_scale(trained, scale):
        return None
    return (f"scale {scale} differs from the scale(s) [{format_scales(trained)}] the model "
            "was trained for")


def slice_axes(trained_scales: list | None, factors: Sequence[float]
               ) -> tuple[int, int, int] | None:
    """The axis order that runs a thick-slice model on slices along another axis.

    A model whose ``trained_scales`` are all (x, y, z) triples thickening one axis (a
    thick-slice model: ``[1, 1, s]``, slices along z) asked for ``factors`` that thicken
    another single axis (``(s, 1, 1)``: slices along x) runs on the volume with those
    two axes swapped, so its slice axis lies where it learned it. None otherwise (the
    volume runs as it is)."""
    triples = [t for t in trained_scales or () if isinstance(t, list | tuple)]
    if not triples or len(triples) != len(trained_scales):
        return None
    learned = {i for t in triples for i, f in enumerate(t) if f != 1}
    wanted = [i for i, f in enumerate(factors) if f != 1]
    if len(learned) != 1 or len(wanted) != 1 or wanted[0] in learned:
        return None
    order = [0, 1, 2]
    (a,), b = learned, wanted[0]
    order[a], order[b] = b, a
    return tuple(order)


def format_scales(trained: list) -> str:
    """``trained_scales`` for people: ``2, 2.5`` or ``1x1x2, 1x1x3``."""
    return ", ".join("x".join(f"{v:g}" for v in t) if isinstance(t, list | tuple) else f"{t:g}"
                     for t in trained)


#: ``isotropic_factors`` refuses a thick axis less than this many times the in-plane
#: spacing (the scan is near isotropic already), and an in-plane axis that much coarser
#: than the finest (two thick axes: which one to resolve is not clear).
MIN_THICK_RATIO = 1.2


def isotropic_factors(size: Sequence[int], spacing: Sequence[float],
                      target: float | None = None) -> Scale:
    """The (x, y, z) zoom factors that make a thick-slice scan of ``size`` voxels of
    ``spacing`` mm isotropic at ``target`` mm (default: its finest, in-plane spacing).

    The thick axis is the one of largest spacing; the output of each axis has
    ``round((n - 1) * spacing / target) + 1`` voxels, so that with the zoom's header
    (first and last voxel centres kept) its spacing is ``target`` to rounding, and the
    factor is that over ``n`` (non-integer allowed: 5.5 / 0.75 mm is about 7.1 on 26
    slices). Raises ``SrrecnnError`` naming ``isotropic`` when the thick axis is less
    than ``MIN_THICK_RATIO`` times the finest, or a second axis is that coarse too."""
    spacing = [float(s) for s in spacing]
    order = sorted(range(3), key=lambda a: spacing[a])
    finest, middle, thick = (spacing[a] for a in order)
    axes = "xyz"
    if thick < MIN_THICK_RATIO * finest:
        raise SrrecnnError(f"voxels of {_mm(spacing)} mm are near isotropic already (the "
                           f"thickest axis is under {MIN_THICK_RATIO:g} times the finest)",
                           "isotropic")
    if middle >= MIN_THICK_RATIO * finest:
        raise SrrecnnError(f"voxels of {_mm(spacing)} mm have two coarse axes "
                           f"({axes[order[1]]} and {axes[order[2]]}): which is the slice axis "
                           "is not clear; give the factors", "isotropic")
    target = finest if target is None else float(target)
    if not (math.isfinite(target) and target > 0):
        raise SrrecnnError(f"must be a positive number, got {target}", "target_spacing")
    out = [max(2, round((n - 1) * s / target) + 1) for n, s in zip(size, spacing)]
    return tuple(o / n for o, n in zip(out, size))


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)
