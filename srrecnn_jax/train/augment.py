"""On-the-fly augmentations of training patches: the variety of real scans.

The original trained on one observation model of clean HR images (Gaussian blur of
sigma 1 voxel, cubic-spline downsampling, nothing else); every augmentation here
departs from it, and all are off by default (``config.AugmentConfig``). What each
one models, and where it acts:

- ``gamma``: contrast varies between scanners, sequences and subjects. The HR
  intensity (in [0, 1]) is raised to a power g, log-uniform in [lo, hi], before the
  degradation: label and input both see it (it is the anatomy's contrast).
- ``bias_field``: coil sensitivity makes intensity drift smoothly across a scan. The
  HR patch is multiplied by ``exp(sum_k c_k m_k(u))``, the 9 monomials of degree 1
  and 2 in coordinates u in [-1, 1] across the whole volume (so each patch sees its
  part of one smooth field), each c_k uniform in [-b, b]; before the degradation,
  label and input both (values may leave [0, 1]).
- ``noise``: magnitude images carry Rician noise. On the low-resolution image (where
  the scanner's noise lives, before the spline zoom back up), ``sqrt((x + n1)^2 +
  n2^2)`` with n1, n2 normal of sigma uniform in [lo, hi] (the intensity range is
  1): input only.
- ``hr_noise``: a real 1 mm scan has noise and texture of its own, which the smooth
  templates lack; a model trained only on them reads the degraded noise of a scan as
  structure to sharpen. Rician noise of sigma uniform in [lo, hi] on the HR image,
  after gamma and bias field, before the degradation: label and input both (the
  model learns to restore a noisy scan from its degraded version, as it is scored).
- ``blur_jitter``: the true point spread function is not known exactly. Each blurred
  axis's sigma is multiplied by its own factor uniform in [1 - j, 1 + j]: input only.
- ``kspace = p``, ``kspace_windows``: a scanner acquiring at low resolution keeps the
  central 1 / s of k-space (a box in k-space, often apodised by a filter), not a
  Gaussian's attenuated band. With probability p a patch's point spread is that
  (``degradation.kspace_matrix``, the window drawn uniformly from ``kspace_windows``)
  instead of the Gaussian, along every axis of scale > 1; the image is its magnitude:
  input only.
- ``flips``, ``permute``: orientation; a flip along each axis with probability 1/2,
  and a uniformly random axis order (isotropic scales only), of label and input alike.

Gamma, bias field, both noises and blur jitter act before or inside the observation
model, so such patches are degraded one by one (``degraded_patch``): an HR block
around the patch with a margin for the blur and the spline edges, degraded with
``degradation.degrade``'s conventions, and the patch cut from its centre. Each draw
comes from the sample's own generator, after its image, scale and position, so
batches stay a function of the step. Arrays are (x, y, z), or (C, x, y, z).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from srrecnn_jax.degradation import kspace_matrix, rician_noise
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.interpolation import zoom_matrix
from srrecnn_jax.train.config import AugmentConfig

#: The bias field's terms: the exponents (a, b, c) of x^a y^b z^c of degree 1 and 2.
BIAS_TERMS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2),
              (1, 1, 0), (1, 0, 1), (0, 1, 1))

#: Low-resolution voxels of margin kept beyond the blur for the spline's edge effects
#: (its prefilter's edge error decays as 0.27^k over k samples).
SPLINE_MARGIN = 4


def draw_gamma(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """A power log-uniform in ``bounds`` = [lo, hi]."""
    return float(np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


#: Rician noise: the magnitude of a complex image with Gaussian noise on both channels.
rician = rician_noise


def jittered(sigma: Sequence[float], jitter: float,
             rng: np.random.Generator) -> tuple[float, ...]:
    """Each of the (x, y, z) ``sigma`` times its own factor uniform in [1 - jitter,
    1 + jitter] (0, no blur along that axis, stays 0)."""
    factors = rng.uniform(1.0 - jitter, 1.0 + jitter, 3)
    return tuple(float(s * f) for s, f in zip(sigma, factors))


def flip_permute(data: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 flips: bool, permute: bool) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips (each axis with probability 1/2) and axis order of the
    (C, x, y, z) ``data`` and ``label``."""
    if flips:
        axes = tuple(1 + a for a in np.flatnonzero(rng.random(3) < 0.5))
        data, label = np.flip(data, axes), np.flip(label, axes)
    if permute:
        order = (0, *(1 + rng.permutation(3)))
        data, label = data.transpose(order), label.transpose(order)
    return data, label


def _kept(length: int, scale: float) -> int:
    """Voxels ``degradation.modcrop`` keeps of ``length`` at ``scale``."""
    return int(np.floor(length / scale) * scale)


@functools.lru_cache(maxsize=1024)
def block_length(grid: int, patch: int, margin: int, scale: float) -> int:
    """The length of an HR block along an axis of ``grid`` voxels (a multiple of the
    scale): the patch and ``margin`` on each side if the axis has room, a length
    ``modcrop`` keeps whole (so the block's LR grid spans it exactly, as ``degrade``'s
    does the volume's: first and last voxel centres aligned) with at least 2 LR voxels."""
    need = min(patch + 2 * margin, grid)
    for length in itertools.chain(range(need, grid + 1), range(need - 1, patch - 1, -1)):
        if _kept(length, scale) == length and length // scale >= 2:
            return length
    raise SrrecnnError(f"scale {scale:g} leaves no block of {patch} to {grid} voxels that "
                       "its modcrop keeps whole; use a scale whose multiples are whole voxels",
                       "patch_scales")


@functools.lru_cache(maxsize=512)
def down_matrix(length: int, scale: float, sigma: float, order: int) -> np.ndarray | None:
    """The (m, length) float32 matrix of ``degrade`` along one axis of a block that modcrop
    keeps whole: the Gaussian blur (reflect, truncate 4, as ``gaussian_filter``), then the
    spline zoom to ``m = round(length / scale)`` samples; None when it is the identity."""
    m = int(round(length / scale))
    matrix = np.eye(length)
    if sigma > 0:
        matrix = scipy.ndimage.gaussian_filter1d(matrix, sigma, axis=0, mode="reflect",
                                                 truncate=4.0)
    if m != length:
        matrix = zoom_matrix(length, m, order) @ matrix
    elif sigma == 0:
        return None
    return matrix.astype(np.float32)


@functools.lru_cache(maxsize=512)
def kspace_down_matrix(length: int, scale: float, window: str, order: int) -> np.ndarray:
    """The (m, length) float32 matrix of the k-space low-pass (``kspace_matrix``) then the
    spline zoom to ``m = round(length / scale)`` samples, along one axis of a block that
    modcrop keeps whole. The magnitude is taken after all axes (``degraded_patch``)."""
    m = int(round(length / scale))
    return (zoom_matrix(length, m, order) @ kspace_matrix(length, scale, window)
            ).astype(np.float32)


#: HR voxels of margin per unit of scale for a k-space point spread: its sinc tails
#: decay as 1 / distance, and the block is zero beyond its edges.
KSPACE_MARGIN = 8


@functools.lru_cache(maxsize=512)
def up_rows(m: int, length: int, first: int, patch: int, order: int) -> np.ndarray:
    """Rows ``first .. first + patch - 1`` of the (length, m) spline zoom back up, float32:
    the zoom evaluated only where the patch lies."""
    matrix = zoom_matrix(m, length, order) if m != length else np.eye(length)
    return np.ascontiguousarray(matrix[first:first + patch], np.float32)


#: ``einsum`` subscripts applying a matrix along axis 0, 1, 2 of an (x, y, z) array.
_ALONG = ("ai,ijk->ajk", "aj,ijk->iak", "ak,ijk->ija")


def separable(volume: np.ndarray, matrices: Sequence[np.ndarray | None]) -> np.ndarray:
    """``volume`` (x, y, z) with ``matrices[a]`` applied along axis a (None: unchanged).

    NumPy's own loops (``einsum``, not BLAS): the same sums in the same order on any
    machine and thread count, so batches stay a function of the step, and no BLAS
    threads competing with the training step for the cores."""
    for axis, matrix in enumerate(matrices):
        if matrix is not None:
            volume = np.einsum(_ALONG[axis], matrix, volume)
    return volume


def bias_field(shape: Sequence[int], start: Sequence[int], size: Sequence[int],
               coefficients: Sequence[float]) -> np.ndarray:
    """The float32 field ``exp(sum_k c_k m_k(u))`` (monomials ``BIAS_TERMS``) over voxels
    ``[start, start + size)`` of a volume of ``shape``, u in [-1, 1] from its first to
    last voxel; computed as a product of 1-D and 2-D factors (cheap per patch)."""
    u = [(2.0 * np.arange(a, a + n) / max(total - 1, 1) - 1.0)
         for a, n, total in zip(start, size, shape)]
    c = coefficients
    fx = np.exp(c[0] * u[0] + c[3] * u[0] ** 2)[:, None, None]
    fy = np.exp(c[1] * u[1] + c[4] * u[1] ** 2)[None, :, None]
    fz = np.exp(c[2] * u[2] + c[5] * u[2] ** 2)[None, None, :]
    fxy = np.exp(c[6] * np.outer(u[0], u[1]))[:, :, None]
    fxz = np.exp(c[7] * np.outer(u[0], u[2]))[:, None, :]
    fyz = np.exp(c[8] * np.outer(u[1], u[2]))[None, :, :]
    return (fx * fy * fz * fxy * fxz * fyz).astype(np.float32)


def degraded_patch(unit: np.ndarray, corner: Sequence[int], patch: int,
                   scale: Sequence[float], sigma: Sequence[float], order: int,
                   config: AugmentConfig, rng: np.random.Generator,
                   other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training pair, degraded on its own.

    The observation model of ``degradation.degrade`` (blur, downsample by 1 / scale,
    cubic spline back up with first and last voxel centres aligned) on an HR block
    around the patch (``block_length``: a margin of 4 sigma for the blur and
    ``SPLINE_MARGIN`` LR voxels for the spline edges), written as one matrix per axis
    (the same linear maps as scipy's, float32), the zoom back up evaluated only on the
    patch.

    Args:
      unit: the (x, y, z) HR volume rescaled to [0, 1].
      corner: the patch's first voxel, on the volume cropped to multiples of ``scale``.
      patch: its size P.
      scale: the (x, y, z) scale; ``sigma``: the (x, y, z) blur (0: none).
      order: the spline order.
      config: the augmentations; draws in this order: gamma, bias coefficients, blur
        factors, noise sigma, HR noise sigma, k-space point spread and its window, HR
        noise, noise (each only when on).
      other: a second input channel (another modality on the same grid), cut unchanged.

    Returns:
      ``(data (C, P, P, P), label (1, P, P, P))`` float32: the spline of the augmented,
      degraded block, and the augmented HR.
    """
    power = draw_gamma(rng, config.gamma) if config.gamma != (1.0, 1.0) else None
    coefficients = (rng.uniform(-config.bias_field, config.bias_field, len(BIAS_TERMS))
                    if config.bias_field > 0 else None)
    if config.blur_jitter > 0:
        sigma = jittered(sigma, config.blur_jitter, rng)
    noise = rng.uniform(*config.noise) if config.noise != (0.0, 0.0) else 0.0
    hr_noise = rng.uniform(*config.hr_noise) if config.hr_noise != (0.0, 0.0) else 0.0
    window = None
    if config.kspace > 0 and rng.random() < config.kspace:
        window = config.kspace_windows[int(rng.integers(len(config.kspace_windows)))]

    grid = [_kept(n, s) for n, s in zip(unit.shape, scale)]
    starts, lengths = [], []
    for n, c, s, g in zip(grid, corner, scale, sigma):
        spread = KSPACE_MARGIN * math.ceil(s) if window and s > 1 else math.ceil(4 * g)
        margin = spread + (SPLINE_MARGIN * math.ceil(s) if s != 1 else 0)
        length = block_length(n, patch, margin, float(s))
        lowest, highest = max(0, c + patch - length), min(c, n - length)
        starts.append(min(max(c - (length - patch) // 2, lowest), highest))
        lengths.append(length)
    hr = np.array(unit[tuple(slice(a, a + n) for a, n in zip(starts, lengths))], np.float32)
    if power is not None:
        hr = np.power(np.maximum(hr, 0), np.float32(power))
    if coefficients is not None:
        hr *= bias_field(unit.shape, starts, lengths, coefficients)
    if hr_noise > 0:
        hr = rician(hr, hr_noise, rng)
    if window is None:
        lr = separable(hr, [down_matrix(n, float(s), float(g), order)
                            for n, s, g in zip(lengths, scale, sigma)])
    else:
        lr = np.abs(separable(hr, [kspace_down_matrix(n, float(s), window, order) if s > 1
                                   else down_matrix(n, float(s), 0.0, order)
                                   for n, s in zip(lengths, scale)]))
    if noise > 0:
        lr = rician(lr, noise, rng)
    offsets = [c - a for c, a in zip(corner, starts)]
    data = separable(lr, [up_rows(m, n, f, patch, order)
                          for m, n, f in zip(lr.shape, lengths, offsets)])
    channels = [data.astype(np.float32)]
    if other is not None:
        channels.append(other[tuple(slice(c, c + patch) for c in corner)])
    cut = tuple(slice(f, f + patch) for f in offsets)
    return np.stack(channels), hr[cut][None]
