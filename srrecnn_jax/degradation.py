"""The observation model of the original training data: blur, modcrop, downsample."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import check_output_file
from srrecnn_jax.images import check_values, read_image, to_array, to_image
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.writing import write_image_atomic


def modcrop(volume: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Crop the far end of each axis to a multiple of the scale (floor)."""
    keep = tuple(int(np.floor(n / s) * s) for n, s in zip(volume.shape, scale))
    return volume[tuple(slice(0, k) for k in keep)]


#: FWHM of a Gaussian over its sigma, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * float(np.sqrt(2.0 * np.log(2.0)))


def slice_profile(scale: Sequence[float]) -> tuple[float, ...]:
    """Per-axis blur sigma of thick slices: a Gaussian slice profile whose FWHM is the
    slice thickness ``s`` voxels along each axis with ``s > 1``, none along the others
    (``(1, 1, 4)`` -> ``(0, 0, 4 / 2.355)``). The isotropic observation model of the
    original training data is ``sigma = 1`` along every axis instead."""
    return tuple(s / FWHM_PER_SIGMA if s > 1 else 0.0 for s in scale)


def blur_sigma(scale: Sequence[float], blur: str = "gaussian",
               sigma: float = 1.0) -> float | tuple[float, ...]:
    """The blur of the observation model at (x, y, z) ``scale``: ``"gaussian"``, the
    original's ``sigma`` along every axis whatever the scale, or ``"slice_profile"``,
    thick slices (``slice_profile(scale)``)."""
    if blur == "gaussian":
        return sigma
    if blur == "slice_profile":
        return slice_profile(scale)
    raise ValueError(f"blur must be gaussian or slice_profile, not {blur!r}")


def degrade(hr: np.ndarray, scale: Sequence[float], sigma: float | Sequence[float] = 1.0,
            order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a low-resolution scan from an (x, y, z) high-resolution one.

    ``blur = gaussian_filter(hr, sigma)`` (truncate 4, reflect; ``sigma`` one value
    or one per axis, 0 for none: see ``slice_profile``), modcrop both to multiples of
    ``scale``, then ``lr = zoom(blur, 1 / scale, order)``.

    Returns:
      ``(lr, hr_cropped)``: the low-resolution volume and the high-resolution
      volume cropped to match it (the ground truth for ``zoom(lr, scale)``).
    """
    blur = scipy.ndimage.gaussian_filter(hr, sigma)
    blur, hr = modcrop(blur, scale), modcrop(hr, scale)
    return zoom(blur, [1.0 / s for s in scale], order), hr


def degrade_image(hr: sitk.Image, scale: Sequence[float], sigma: float = 1.0,
                  order: int = 3) -> dict[str, sitk.Image]:
    """``degrade`` on an image, with consistent headers.

    Returns:
      ``{"lr", "interpolated", "hr"}``: the LR image, its spline zoom back by
      ``scale`` and the cropped HR image. ``zoom`` aligns first and last voxel
      centres, so all three share the HR origin and direction, and the
      interpolated image lies exactly on the cropped HR grid.
    """
    array = to_array(hr)
    check_values(array, "HR image")
    lr, cropped = degrade(array, scale, sigma, order)
    if min(lr.shape) < 2:
        raise SrrecnnError(f"{tuple(scale)} leaves {lr.shape} LR voxels", "scale")
    spacing = hr.GetSpacing()
    geometry = (hr.GetOrigin(), hr.GetDirection())
    lr_spacing = [s * (a - 1) / (b - 1) for s, a, b in zip(spacing, cropped.shape, lr.shape)]
    interpolated = zoom(lr, [a / b for a, b in zip(cropped.shape, lr.shape)], order)
    return {"lr": to_image(lr, lr_spacing, *geometry),
            "interpolated": to_image(interpolated, spacing, *geometry),
            "hr": to_image(cropped, spacing, *geometry)}


def degrade_files(hr_path: Path, lr_path: Path, scale: Sequence[float], sigma: float = 1.0,
                  order: int = 3, interpolated: Path | None = None,
                  cropped_hr: Path | None = None, force: bool = False) -> dict[str, sitk.Image]:
    """``degrade_image`` from a file to files: the LR image, and optionally the
    interpolated and cropped HR images. Every output is checked before any work."""
    outputs = {"lr": lr_path, "interpolated": interpolated, "hr": cropped_hr}
    for output in outputs.values():
        if output is not None:
            check_output_file(output, force, [hr_path])
    if sigma < 0:
        raise SrrecnnError(f"must be >= 0, got {sigma}", "sigma")
    images = degrade_image(read_image(hr_path, "HR image"), scale, sigma, order)
    for name, output in outputs.items():
        if output is not None:
            write_image_atomic(images[name], output, replace=force)
    return images
