"""Cubic-spline zoom exactly as the original: ``scipy.ndimage.zoom`` with its defaults."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage

from srrecnn_jax.scales import parse_scale

if TYPE_CHECKING:
    import jax


def zoomed_shape(shape: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """Output shape of ``scipy.ndimage.zoom``: ``round(n * s)`` per axis."""
    return tuple(int(round(n * s)) for n, s in zip(shape, scale))


def zoom(volume: np.ndarray, scale: Sequence[float], order: int = 3) -> np.ndarray:
    """Spline zoom of an (x, y, z) array: ``scipy.ndimage.zoom(volume, scale, order=order)``.

    Output dtype follows the input (the original zoomed float32 arrays).
    """
    return scipy.ndimage.zoom(volume, tuple(scale), order=order)


# --- On-device zoom -------------------------------------------------------------------------
#
# scipy's spline zoom (any order 0-5, mode='constant', grid_mode=False, prefilter=True) is linear
# in the voxel values and separable per axis: the prefilter is a 1-D recursive filter applied
# along each axis in turn, the interpolation a tensor product of 1-D kernels, and with
# grid_mode=False every output coordinate lies inside [0, n - 1], so the 'constant' edge never
# produces cval. The 3-D zoom is therefore three matrix products, one per axis, each matrix the
# 1-D zoom of the unit vectors. That runs on an accelerator as three dense contractions.


@functools.lru_cache(maxsize=256)
def zoom_matrix(n_in: int, n_out: int, order: int = 3) -> np.ndarray:
    """The (n_out, n_in) float64 matrix of scipy's 1-D spline zoom from n_in to n_out samples.

    ``zoom_matrix(n, m) @ v`` equals ``scipy.ndimage.zoom(v, m / n, order=order)`` for a 1-D
    ``v`` of length n (to float64 rounding), and applied along one axis of an array it is that
    axis's share of the N-D zoom. Built by zooming an n_in x n_in identity along its first axis
    only (column j is the zoom of the unit vector e_j), so it inherits scipy's conventions
    exactly: the per-axis factor (n_in - 1) / (n_out - 1) taken from the shapes, the spline
    prefilter and its edge handling. Cached; the returned array is read-only.

    Raises:
      ValueError: a size below 1, or an order outside 0-5.
    """
    n_in, n_out, order = int(n_in), int(n_out), int(order)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be at least 1, got n_in={n_in}, n_out={n_out}")
    if not 0 <= order <= 5:
        raise ValueError(f"spline order must be 0-5, got {order}")
    # scipy's output length is round(n_in * factor); n_in * (n_out / n_in) is within an ulp of
    # n_out, so it rounds back to n_out. The factor itself is recomputed by scipy from the shapes.
    matrix = scipy.ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=order)
    if matrix.shape != (n_out, n_in):
        raise AssertionError(f"scipy zoomed {n_in} to {matrix.shape[0]} samples, not {n_out}")
    matrix.setflags(write=False)
    return matrix


def _contraction_cost(shape: Sequence[int], out_shape: Sequence[int],
                      axes: Sequence[int]) -> int:
    current, total = list(shape), 0
    for axis in axes:
        total += out_shape[axis] * math.prod(current)
        current[axis] = out_shape[axis]
    return total


def _contraction_order(shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """The axis order of the three contractions with the fewest multiply-adds."""
    return min(itertools.permutations(range(3)),
               key=lambda axes: _contraction_cost(shape, out_shape, axes))


def zoom_multiply_adds(shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Multiply-adds ``zoom_device`` executes from ``shape`` to ``out_shape`` (x, y, z)."""
    return _contraction_cost(shape, out_shape, _contraction_order(shape, out_shape))


@functools.cache
def _zoom_separable():
    """The jitted contraction (built on first use, so importing this module does not load JAX).

    ``volume`` (X, Y, Z) contracted with (X', X), (Y', Y), (Z', Z) matrices -> (X', Y', Z').
    jit retraces per input shape; the contraction order is picked from the static shapes.
    """
    import jax
    import jax.numpy as jnp

    highest = jax.lax.Precision.HIGHEST

    # Each product keeps the (x, y, z) memory order, so XLA needs no transposes of the volume:
    # x and z are plain 2-D matmuls on a reshaped view, y a matmul broadcast over x. (A
    # tensordot + moveaxis version ran up to 1.6x slower on CPU.)
    def along_x(volume, matrix):
        x, y, z = volume.shape
        flat = jnp.matmul(matrix, volume.reshape(x, y * z), precision=highest)
        return flat.reshape(matrix.shape[0], y, z)

    def along_y(volume, matrix):
        return jnp.matmul(matrix, volume, precision=highest)

    def along_z(volume, matrix):
        x, y, z = volume.shape
        flat = jnp.matmul(volume.reshape(x * y, z), matrix.T, precision=highest)
        return flat.reshape(x, y, matrix.shape[0])

    along = (along_x, along_y, along_z)

    @jax.jit
    def contract(volume, mx, my, mz):
        matrices = (mx, my, mz)
        out_shape = tuple(m.shape[0] for m in matrices)
        for axis in _contraction_order(volume.shape, out_shape):
            volume = along[axis](volume, matrices[axis])
        return volume

    return contract


def zoom_device(volume, scale: float | Sequence[float], order: int = 3) -> jax.Array:
    """``zoom(volume, scale, order)`` computed with JAX on the volume's device (GPU if any).

    ``volume`` is an (x, y, z) JAX or NumPy array (NumPy goes to the default device), ``scale``
    one factor or three (x, y, z), as ``scales.parse_scale`` takes them; the
    result is a float32 (X', Y', Z') ``jax.Array`` with ``(X', Y', Z') == zoomed_shape(shape,
    scale)``. Each axis is one contraction with the float32 ``zoom_matrix`` of that axis,
    at ``Precision.HIGHEST`` (full float32, no TF32/bf16 passes), so a GPU pipeline need not
    wait for scipy on the CPU. Equals ``scipy.ndimage.zoom(volume, scale, order=order)`` up to
    float32 rounding (about 1e-6 of the value range). The contractions are jit-compiled once
    per shape; the matrices are arguments (cached on the host), not constants, so compiling is
    quick.

    Raises:
      ValueError: not 3-D, a bad scale, or an axis that would zoom to 0 samples.
    """
    import jax.numpy as jnp

    volume = jnp.asarray(volume, dtype=jnp.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected an (x, y, z) volume, got shape {volume.shape}")
    out_shape = zoomed_shape(volume.shape, parse_scale(scale))
    matrices = [zoom_matrix(n, m, order).astype(np.float32)
                for n, m in zip(volume.shape, out_shape)]
    return _zoom_separable()(volume, *matrices)
