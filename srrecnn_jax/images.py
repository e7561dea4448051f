"""Images in: SimpleITK at the edges, NumPy arrays in (x, y, z) order inside.

SimpleITK's ``GetArrayFromImage`` returns (z, y, x); the original release
swapped that to (x, y, z) and its Caffe weights assume it, so every array in
this package is (x, y, z): ``to_array`` and ``to_image`` are the only places
that transpose. Reading checks the size, the shape and the voxel data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import missing_file, sitk_name
from srrecnn_jax.limits import size_problem, size_text
from srrecnn_jax.nifti import check_nifti_complete


def read_image(path: str | Path, role: str = "image") -> sitk.Image:
    """Read a scalar 3-D image; raise ``SrrecnnError`` naming ``path`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise missing_file(path, role)
    if path.is_dir():
        raise SrrecnnError(f"{path}: is a folder, expected a {role} file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(sitk_name(path))
    try:
        reader.ReadImageInformation()  # the header only: check the size before the voxels
        _check_declared_size(reader, path, role)
        image = reader.Execute()
    except RuntimeError:
        raise SrrecnnError(f"{path}: unreadable or corrupt {role} (SimpleITK could not read it)") \
            from None
    check_image(image, str(path))
    if path.name.endswith((".nii", ".nii.gz")):
        check_nifti_complete(path, role)
    return image


def _check_declared_size(reader: sitk.ImageFileReader, path: Path, role: str) -> None:
    """Refuse, from its header alone, an image whose voxels would not fit this machine (a
    small compressed file can declare, or decompress to, gigabytes): reading it holds the
    image, its array and the float32 array made from it."""
    size = reader.GetSize()
    components = reader.GetNumberOfComponents()
    pixel = sitk.Image([1] * len(size), reader.GetPixelID(), components)
    bytes_per_voxel = components * (2 * pixel.GetSizeOfPixelComponent() + 4)
    problem = size_problem(float(np.prod([float(n) for n in size])), bytes_per_voxel)
    if problem:
        raise SrrecnnError(f"{path}: {role} of {size_text(size)} voxels "
                           f"({pixel.GetPixelIDTypeAsString()}), {problem}")


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


def read_input(path: Path, role: str = "input image") -> sitk.Image:
    """An image file, or the DICOM series in a folder (read with GDCM's series order)."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(sitk_name(path))
        if not ids:
            raise SrrecnnError(f"{path}: folder holds no DICOM series")
        if len(ids) > 1:  # which one a user wants cannot be guessed: none is taken
            shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
            raise SrrecnnError(f"{path}: folder holds {len(ids)} DICOM series (Series "
                               f"Instance UIDs {shown}); none is chosen: put each series "
                               "in a folder of its own")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
        try:
            image = reader.Execute()
        except RuntimeError:
            raise SrrecnnError(f"{path}: unreadable DICOM series") from None
        check_image(image, str(path))
        return image
    return read_image(path, role)


def is_dicom_series(folder: Path) -> bool:
    """A folder holding DICOM files that GDCM groups into a series."""
    if not folder.is_dir() or not any(p.suffix.lower() == ".dcm" for p in folder.iterdir()):
        return False
    try:
        name = sitk_name(folder)
    except SrrecnnError:
        return True  # GDCM cannot be asked: taken as a series, whose reading then fails
    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(name))


def image_size(path: Path, role: str = "image") -> tuple[int, ...]:
    """The (x, y, z) size of a 3-D image file, from its header alone."""
    return image_spacing(path, role)[0]


def image_spacing(path: Path, role: str = "image"
                  ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The (x, y, z) size and voxel spacing (mm) of a 3-D image file, from its header
    alone (a DICOM series folder is read whole)."""
    if path.is_dir():
        image = read_input(path, role)
        return tuple(image.GetSize()), tuple(image.GetSpacing())
    if not path.is_file():
        raise SrrecnnError(f"{path}: no such {role} file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(sitk_name(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SrrecnnError(f"{path}: unreadable or corrupt {role}") from None
    if reader.GetDimension() != 3:
        raise SrrecnnError(f"{path}: image is {reader.GetDimension()}-D, expected 3-D")
    return tuple(reader.GetSize()), tuple(reader.GetSpacing())


def read_volume(path: Path, role: str = "image") -> np.ndarray:
    """An image file's voxels as a checked (finite, positive maximum) (x, y, z) float32 array."""
    return read_volume_spacing(path, role)[0]


def read_volume_spacing(path: Path, role: str = "image"
                        ) -> tuple[np.ndarray, tuple[float, ...]]:
    """``read_volume`` and the image's (x, y, z) voxel size in mm, from one read."""
    image = read_image(path, role)
    array = to_array(image)
    check_values(array, str(path))
    return array, tuple(image.GetSpacing())
