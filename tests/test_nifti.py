"""The raw checks of NIfTI files (``nifti``): data cut short, and NaN or infinite voxels,
which SimpleITK reads as 0 without a word."""

from __future__ import annotations

import gzip
import struct

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import read_image
from srrecnn_jax.nifti import check_nifti_complete


def volume(shape=(20, 22, 18), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).uniform(10, 100, shape).astype(dtype)


def test_simpleitk_reads_a_nifti_nan_as_zero(tmp_path):
    """Why the raw check exists (SimpleITK 2.x): a NaN voxel comes back as 0."""
    values = volume()
    values[3, 4, 5] = np.nan
    path = tmp_path / "nan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), path)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[5, 4, 3] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("header", [nibabel.Nifti1Image, nibabel.Nifti2Image])
def test_nan_and_infinity_are_counted_and_refused(tmp_path, dtype, suffix, header):
    """One NaN and two infinities in float32 or float64, NIfTI-1 or -2, plain or
    gzipped: one error naming the file and the count of 3."""
    values = volume(dtype=dtype)
    values[3, 4, 5], values[0, 0, 0], values[-1, -1, -1] = np.nan, np.inf, -np.inf
    path = tmp_path / f"bad{suffix}"
    nibabel.save(header(values, np.eye(4)), path)
    with pytest.raises(SrrecnnError, match=f"{path}: input has 3 NaN or infinite voxels"):
        check_nifti_complete(path, "input")


def test_a_nan_across_a_chunk_boundary_and_after_an_extension_is_found(tmp_path):
    """A 9 MB float32 volume (three 4 MiB chunks) with a header extension (data after
    byte 540), its only NaN the last voxel: found."""
    values = volume((140, 130, 130))
    values[-1, -1, -1] = np.nan
    image = nibabel.Nifti1Image(values, np.eye(4))
    image.header.extensions.append(nibabel.nifti1.Nifti1Extension(6, b"x" * 1000))
    path = tmp_path / "big.nii.gz"
    nibabel.save(image, path)
    with gzip.open(path, "rb") as f:
        assert struct.unpack("<f", f.read(112)[108:112])[0] > 540  # vox_offset
    with pytest.raises(SrrecnnError, match="1 NaN or infinite voxels"):
        check_nifti_complete(path, "input")


def test_finite_float_and_integer_images_pass(tmp_path):
    """Finite floats, and integer voxels (which cannot be NaN, whatever their bytes)."""
    for name, values in (("f.nii.gz", volume()),
                         ("i.nii.gz", np.full((8, 8, 8), -1, np.int16))):
        nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), tmp_path / name)
        check_nifti_complete(tmp_path / name, "input")


def test_reading_a_nifti_with_a_nan_is_refused(tmp_path):
    values = volume()
    values[1, 1, 1] = np.nan
    path = tmp_path / "nan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), path)
    with pytest.raises(SrrecnnError, match="NaN"):
        read_image(path, "input image")
