"""Image quality metrics."""

from __future__ import annotations

import numpy as np


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
