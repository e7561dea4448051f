"""Image grids: the geometry of a zoomed image, grid comparison, resampling onto a
grid in physical space, and warnings about a suspect header."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from srrecnn_jax.errors import SrrecnnError


def zoomed_geometry(image: sitk.Image, out_size: Sequence[int], scale: Sequence[float],
                    header: str = "consistent") -> tuple[tuple, tuple, tuple]:
    """Spacing, origin and direction of an image zoomed to ``out_size`` (x, y, z).

    ``scipy.ndimage.zoom`` (``grid_mode=False``) maps the first and last voxel
    centres of the input onto those of the output, so the consistent spacing is
    ``spacing * (n_in - 1) / (n_out - 1)`` and the origin is unchanged.
    ``header="original"`` writes the original release's ``spacing / scale``.
    """
    n_in, spacing = image.GetSize(), image.GetSpacing()
    if header == "original":
        new = [s / f for s, f in zip(spacing, scale)]
    elif header == "consistent":
        new = [s * (a - 1) / (b - 1) for s, a, b in zip(spacing, n_in, out_size)]
    else:
        raise ValueError(f"unknown header mode {header!r}")
    return tuple(new), image.GetOrigin(), image.GetDirection()


def same_grid(image: sitk.Image, size: Sequence[int], spacing: Sequence[float],
              origin: Sequence[float], direction: Sequence[float], tol: float = 1e-4) -> bool:
    """Whether ``image`` lies on the given grid (to ``tol`` mm / relative)."""
    return (tuple(image.GetSize()) == tuple(size)
            and np.allclose(image.GetSpacing(), spacing, rtol=tol, atol=tol)
            and np.allclose(image.GetOrigin(), origin, rtol=0, atol=tol * max(spacing))
            and np.allclose(image.GetDirection(), direction, rtol=0, atol=tol))


def resample_onto(image: sitk.Image, size: Sequence[int], spacing: Sequence[float],
                  origin: Sequence[float], direction: Sequence[float],
                  name: str) -> tuple[sitk.Image, float]:
    """Resample ``image`` onto a grid in physical space (linear, 0 outside).

    Returns the resampled image and the fraction of the grid it covers;
    raises ``SrrecnnError`` if it covers none of it.
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputSpacing([float(s) for s in spacing])
    resampler.SetOutputOrigin([float(o) for o in origin])
    resampler.SetOutputDirection([float(d) for d in direction])
    resampler.SetTransform(sitk.Transform())
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    support = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    support.CopyInformation(image)
    footprint = resampler.Execute(support)  # keep the image alive while its view is read
    covered = float(sitk.GetArrayViewFromImage(footprint).mean())
    if covered == 0:
        raise SrrecnnError(f"{name}: reference has no physical overlap with the input")
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return resampler.Execute(image), covered


def header_warnings(image: sitk.Image, name: str, trained_spacing: float | None = None,
                    scale: Sequence[float] = (1.0, 1.0, 1.0)) -> list[str]:
    """Warnings about a header that is suspect, or far from what the model saw.

    ``trained_spacing``: the voxel size (mm) of the HR volumes the model learned to
    produce (a model folder's ``trained_spacing``); the output grid, the input's
    spacing divided by the (x, y, z) ``scale``, more than 2x off it along any axis warns:
    the network's filters are tuned to anatomy at that voxel size."""
    warnings = []
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
        warnings.append(f"{name}: direction cosines are not orthonormal; the header may be "
                        "inconsistent")
    spacing = np.array(image.GetSpacing())
    shown = tuple(round(float(s), 3) for s in spacing)
    if spacing.max() > 4 * spacing.min():
        warnings.append(f"{name}: very anisotropic voxels {shown} mm")
    output = spacing / np.asarray(scale, float)
    if trained_spacing and np.any(np.abs(np.log(output / trained_spacing)) > np.log(2)):
        factors = "x".join(f"{f:g}" for f in scale)
        warnings.append(f"{name}: spacing {shown} mm at scale {factors} gives "
                        f"{tuple(round(float(s), 3) for s in output)} mm voxels, far from the "
                        f"{trained_spacing:g} mm the model was trained to produce")
    return warnings
