"""The observation model of the original training data: blur, modcrop, downsample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from srrecnn_jax.interpolation import zoom


def modcrop(volume: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Crop the far end of each axis to a multiple of the scale (floor)."""
    keep = tuple(int(np.floor(n / s) * s) for n, s in zip(volume.shape, scale))
    return volume[tuple(slice(0, k) for k in keep)]


def degrade(hr: np.ndarray, scale: Sequence[float], sigma: float = 1.0,
            order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a low-resolution scan from an (x, y, z) high-resolution one.

    ``blur = gaussian_filter(hr, sigma)`` (truncate 4, reflect), modcrop both
    to multiples of ``scale``, then ``lr = zoom(blur, 1 / scale, order)``.

    Returns:
      ``(lr, hr_cropped)``: the low-resolution volume and the high-resolution
      volume cropped to match it (the ground truth for ``zoom(lr, scale)``).
    """
    blur = scipy.ndimage.gaussian_filter(hr, sigma)
    blur, hr = modcrop(blur, scale), modcrop(hr, scale)
    return zoom(blur, [1.0 / s for s in scale], order), hr
