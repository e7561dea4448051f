"""Data consistency: make a super-resolved volume give back its input when acquired again.

A network guesses the detail the low-resolution input lost; nothing stops it changing
what the input did measure too. A network trained on the release's Gaussian blur, fed
a scanner's k-space acquisition, sharpens frequencies the scanner kept intact and ends
below cubic spline. Projecting its output onto the volumes consistent with the input
keeps the network's detail and the input's measurements.

The acquisition ``A`` maps the output grid (x, y, z: ``n`` voxels per axis) to the
input's (``m``) and is separable, ``A_i = Z_i K_i`` per axis: ``K_i`` the point spread
(``"kspace"``: the central ``m / n`` of k-space, ``degradation.kspace_matrix``;
``"gaussian"``: the release's blur of sigma 1 output voxel, reflect, truncate 4, as
``degradation.degrade``; ``"slice_profile"``: thick slices, a Gaussian of FWHM the
factor ``n / m`` along each axis whose factor is not 1, none along the others, as
``degradation.slice_profile``), ``Z_i`` the spline zoom from ``n`` to ``m`` samples
(``interpolation.zoom_matrix``): the sampling of ``degradation.observe``, whose voxel
centres are the inverse of ``sr``'s zoom, so the two grids line up. The result is

    x' = x + (P_1 (x) P_2 (x) P_3)(y - A x),   P_i = A_i^T (A_i A_i^T + lam t_i I)^-1

with ``t_i`` the mean diagonal of ``A_i A_i^T``: with ``lam = 0`` the least-squares
projection (``A x' = y``); a larger ``lam`` trusts the input less, which is what its
noise asks for. Axes with scale 1 are left alone under ``"kspace"`` and
``"slice_profile"``; the release's Gaussian blurs every axis, as its simulation does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from srrecnn_jax.config import ACQUISITIONS, DEFAULT_LAMBDA
from srrecnn_jax.degradation import FWHM_PER_SIGMA, kspace_matrix
from srrecnn_jax.interpolation import zoom_matrix


@functools.lru_cache(maxsize=64)
def axis_operators(n: int, m: int, acquisition: str, lam: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(A_i, P_i)`` along one axis: the (m, n) acquisition and its (n, m) regularised
    pseudo-inverse (see the module's docstring). float64, cached, read-only."""
    if acquisition == "kspace":
        spread = kspace_matrix(n, n / m) if n != m else np.eye(n)
    elif acquisition == "slice_profile" and n == m:
        spread = np.eye(n)
    elif acquisition in ("gaussian", "slice_profile"):
        sigma = 1.0 if acquisition == "gaussian" else (n / m) / FWHM_PER_SIGMA
        spread = scipy.ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect",
                                                 truncate=4.0)
    else:
        raise ValueError(f"acquisition must be kspace, gaussian or slice_profile, "
                         f"not {acquisition!r}")
    a = zoom_matrix(n, m) @ spread
    gram = a @ a.T
    p = a.T @ np.linalg.pinv(gram + lam * np.trace(gram) / m * np.eye(m), rcond=1e-10,
                             hermitian=True)
    a.setflags(write=False)
    p.setflags(write=False)
    return a, p


def _separable(matrices: Sequence[np.ndarray], volume: np.ndarray) -> np.ndarray:
    for axis, matrix in enumerate(matrices):
        volume = np.moveaxis(np.tensordot(matrix.astype(np.float32), volume,
                                          axes=([1], [axis])), 0, axis)
    return volume


def project(output: np.ndarray, lr: np.ndarray, acquisition: str,
            lam: float | None = None) -> np.ndarray:
    """``output`` (x, y, z, on the zoomed grid) made consistent with ``lr`` (x, y, z,
    the input) under ``acquisition`` with regularisation ``lam`` (module docstring;
    None: ``DEFAULT_LAMBDA``). float32; ``output`` itself for ``"none"``."""
    if acquisition == "none":
        return output
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, "
                         f"not {acquisition!r}")
    lam = DEFAULT_LAMBDA[acquisition] if lam is None else lam
    ops = [axis_operators(n, m, acquisition, float(lam))
           for n, m in zip(output.shape, lr.shape)]
    x = np.asarray(output, np.float32)
    residual = np.asarray(lr, np.float32) - _separable([a for a, _ in ops], x)
    return x + _separable([p for _, p in ops], residual)
