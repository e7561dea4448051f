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
    """Crop the far end of each axis to a multiple of the scale (floor). A length that
    is a multiple up to float rounding (110 / 4.4 = 24.999999999999996) counts as one."""
    keep = tuple(int(np.floor(n / s + 1e-9) * s + 1e-9) for n, s in zip(volume.shape, scale))
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


# --- Observation models of real acquisitions -------------------------------------------
#
# A scanner that acquires at a lower resolution keeps the central part of k-space: along
# an axis of scale s, the frequencies below the low-resolution Nyquist frequency
# 1 / (2 s) cycles per HR voxel, often weighted by a filter the scanner applies, and the
# image is the magnitude of the complex result, with complex Gaussian noise (Rician in
# the magnitude). The release's model (Gaussian blur of sigma 1 voxel) attenuates that
# band to about 0.29 at its edge; a network trained on it over-sharpens a real scan.
#
# Grid convention (the same as ``degrade`` and ``sr``'s zoom): the HR image is filtered
# on its own grid, cropped to multiples of the scale, and sampled by the cubic-spline
# zoom by 1 / s, which maps the first and last HR voxel centres onto the first and last
# LR ones; ``zoom(lr, s)`` then lies on the cropped HR grid exactly.

#: The k-space filters (apodisation) scanners apply inside the kept band, as functions
#: of r = |f| / f_c in [0, 1]: ``none`` (a box), ``hamming`` (0.54 + 0.46 cos(pi r)),
#: ``tukey`` (flat to r = 0.5, then a raised cosine to 0), ``fermi``
#: (1 / (1 + exp((r - 0.9) / 0.05))).
KSPACE_WINDOWS = ("none", "hamming", "tukey", "fermi")
#: The point-spread functions of ``observe``.
PSFS = ("gaussian", "kspace")


def kspace_weights(frequencies: np.ndarray, scale: float, window: str = "none") -> np.ndarray:
    """The weight of each frequency (cycles per HR voxel) kept by an acquisition at
    ``scale``: ``window`` inside ``|f| < 1 / (2 scale)``, half of it at the edge, 0
    beyond. Symmetric in f, so the filtered image of a real image is real."""
    if window not in KSPACE_WINDOWS:
        raise ValueError(f"window must be one of {', '.join(KSPACE_WINDOWS)}, not {window!r}")
    cutoff = 0.5 / scale
    r = np.abs(frequencies) / cutoff
    inside = np.where(np.isclose(r, 1.0), 0.5, (r < 1.0).astype(float))
    if window == "hamming":
        shape = 0.54 + 0.46 * np.cos(np.pi * np.minimum(r, 1.0))
    elif window == "tukey":
        shape = np.where(r <= 0.5, 1.0, 0.5 * (1 + np.cos(np.pi * (np.minimum(r, 1) - 0.5)
                                                          / 0.5)))
    elif window == "fermi":
        shape = 1.0 / (1.0 + np.exp((r - 0.9) / 0.05))
    else:
        shape = np.ones_like(r)
    return inside * shape


def kspace_matrix(length: int, scale: float, window: str = "none") -> np.ndarray:
    """The (length, length) float64 matrix of the k-space low-pass along one axis: the
    convolution with the point-spread ``ifft(kspace_weights)`` of a grid twice the
    length (the object is zero beyond the field of view, so nothing wraps around).
    The identity at ``scale`` 1 with no window."""
    n = 2 * length
    psf = np.fft.ifft(kspace_weights(np.fft.fftfreq(n), scale, window)).real
    index = np.arange(length)
    return psf[(index[:, None] - index[None, :]) % n]


def kspace_lowpass(volume: np.ndarray, scale: Sequence[float],
                   window: str = "none") -> np.ndarray:
    """``volume`` (x, y, z) low-passed in k-space along each axis of scale > 1 (see
    ``kspace_matrix``), then its magnitude: what a scanner's LR acquisition sees of the
    object, still on the HR grid. float32."""
    out = np.asarray(volume, np.float64)
    for axis, s in enumerate(scale):
        if s > 1:
            out = np.moveaxis(np.tensordot(kspace_matrix(out.shape[axis], s, window), out,
                                           axes=([1], [axis])), 0, axis)
    return np.abs(out).astype(np.float32)


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``sqrt((x + n1)^2 + n2^2)``, n1 and n2 normal of ``sigma``: the magnitude of a
    complex image with Gaussian noise on both channels. Same dtype as ``image``."""
    n1 = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt((image + n1) ** 2 + n2 ** 2).astype(image.dtype)


def observe(hr: np.ndarray, scale: Sequence[float], psf: str = "gaussian",
            window: str = "none", sigma: float | Sequence[float] = 1.0,
            noise: float = 0.0, seed: int = 0, order: int = 3
            ) -> tuple[np.ndarray, np.ndarray]:
    """A low-resolution acquisition of the (x, y, z) ``hr`` volume at ``scale``.

    ``psf="gaussian"``: the release's model, ``degrade(hr, scale, sigma)`` (``sigma`` as
    there: 1 voxel, or ``slice_profile(scale)`` for thick slices). ``psf="kspace"``: the
    central 1 / s of k-space along each axis (``kspace_lowpass`` with ``window``),
    magnitude, then the same crop and spline sampling as ``degrade``. ``noise``: Rician
    noise of that sigma, as a fraction of the HR maximum, on the LR image (seeded by
    ``seed``).

    Returns ``(lr, hr_cropped)`` as ``degrade``.
    """
    if psf == "gaussian":
        lr, cropped = degrade(hr, scale, sigma, order)
    elif psf == "kspace":
        low = kspace_lowpass(modcrop(hr, scale), scale, window)
        lr, cropped = zoom(low, [1.0 / s for s in scale], order), modcrop(hr, scale)
    else:
        raise ValueError(f"psf must be one of {', '.join(PSFS)}, not {psf!r}")
    if noise > 0:
        peak = float(np.max(hr))
        lr = rician_noise(np.asarray(lr, np.float32), noise * peak,
                          np.random.default_rng(seed))
    return lr, cropped
