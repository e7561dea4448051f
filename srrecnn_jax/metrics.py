"""Image quality metrics on (x, y, z) volumes: PSNR and 3-D SSIM."""

from __future__ import annotations

import numpy as np
import scipy.ndimage


def psnr(estimate: np.ndarray, truth: np.ndarray, peak: float | None = None,
         mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(peak^2 / MSE)``.

    Args:
      estimate, truth: arrays of one shape.
      peak: the signal peak; default ``truth.max()``.
      mask: optional boolean array; the MSE is taken over its true voxels.
    """
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"shapes differ: {estimate.shape} vs {truth.shape}")
    peak = float(truth.max()) if peak is None else peak
    error = (estimate - truth) ** 2
    mse = float(error[mask].mean() if mask is not None else error.mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def ssim(estimate: np.ndarray, truth: np.ndarray, data_range: float | None = None,
         mask: np.ndarray | None = None, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) with a 3-D Gaussian window.

    Local means, variances and covariance are Gaussian-weighted (``sigma``
    voxels, truncated at 3.5 sigma: an 11-voxel window for 1.5), with
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L`` the data range of
    ``truth`` unless given. The map is averaged over ``mask`` if given.
    """
    x, y = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    span = float(y.max() - y.min()) if data_range is None else data_range
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(a, sigma, truncate=3.5, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index[mask].mean() if mask is not None else index.mean())
