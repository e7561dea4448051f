"""Images in and out: SimpleITK at the edges, NumPy arrays in (x, y, z) order inside.

SimpleITK's ``GetArrayFromImage`` returns (z, y, x); the original release
swapped that to (x, y, z) and its Caffe weights assume it, so every array in
this package is (x, y, z): ``to_array`` and ``to_image`` are the only places
that transpose.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax.errors import SrrecnnError


def read_image(path: str | Path, role: str = "image") -> sitk.Image:
    """Read a scalar 3-D image; raise ``SrrecnnError`` naming ``path`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise SrrecnnError(f"{path}: no such {role} file")
    if path.is_dir():
        raise SrrecnnError(f"{path}: is a folder, expected a {role} file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise SrrecnnError(f"{path}: unreadable or corrupt {role} (SimpleITK could not read it)") \
            from None
    check_image(image, str(path))
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path, role)
    return image


def _check_nifti_complete(path: Path, role: str) -> None:
    """Refuse a NIfTI file whose voxel data is cut short.

    SimpleITK fills missing voxels of a truncated file with zeros or garbage
    without an error, so compare the (decompressed) length with what the
    header promises: ``vox_offset + prod(dim) * bitpix / 8``.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
            length = len(header)
            while chunk := f.read(1 << 22):
                length += len(chunk)
    except (OSError, EOFError):
        raise SrrecnnError(f"{path}: truncated or corrupt {role} (compressed data cut short)") \
            from None
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return  # not a header we know: SimpleITK read it, trust it
    count = 1
    for n in dims[1:1 + max(0, min(dims[0], 7))]:
        count *= max(n, 1)
    if length < offset + count * bitpix // 8:
        raise SrrecnnError(f"{path}: truncated {role} ({length} bytes, the header promises "
                           f"{offset + count * bitpix // 8})")


def check_image(image: sitk.Image, name: str) -> None:
    """A 3-D, single-component image with at least two voxels along every axis."""
    if image.GetDimension() != 3:
        raise SrrecnnError(f"{name}: image is {image.GetDimension()}-D, expected 3-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SrrecnnError(f"{name}: image has {image.GetNumberOfComponentsPerPixel()} "
                           "components per voxel, expected a scalar image")
    if min(image.GetSize()) < 2:
        raise SrrecnnError(f"{name}: image of size {image.GetSize()} is not really 3-D "
                           "(one voxel along an axis)")


def to_array(image: sitk.Image, dtype: type = np.float32) -> np.ndarray:
    """Voxels as an (x, y, z) array."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=dtype)


def to_image(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
             direction: Sequence[float]) -> sitk.Image:
    """An (x, y, z) array as a SimpleITK image with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def check_values(array: np.ndarray, name: str) -> None:
    """Finite voxels and a positive maximum (the pipeline divides by it)."""
    if not np.all(np.isfinite(array)):
        raise SrrecnnError(f"{name}: image has non-finite voxels (NaN or infinity)")
    top = float(array.max())
    if top <= 0:
        what = "all zero" if top == 0 and float(array.min()) == 0 else f"maximum is {top:g}"
        raise SrrecnnError(f"{name}: image is {what}; normalisation needs a positive maximum")


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


def write_image_atomic(image: sitk.Image, path: str | Path,
                       staging_root: Path | None = None) -> None:
    """Write ``path`` so that it never exists half-written.

    The image is written under its own name in a temporary folder (beside
    ``path``, or in ``staging_root`` on the same file system), then moved into
    place: data files first (``.raw``, ``.img`` of two-file formats), the
    named file last.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SrrecnnError(f"{path}: output folder {path.parent} does not exist")
    try:
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=staging_root or path.parent))
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None
    try:
        sitk.WriteImage(image, str(staging / path.name))
        for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(written, path.parent / written.name)
    except (RuntimeError, OSError):
        raise SrrecnnError(f"{path}: cannot write image (unknown extension or "
                           "unwritable location)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file under a temporary name, then rename."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
