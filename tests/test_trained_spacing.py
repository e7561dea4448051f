"""The voxel size a model was trained to produce (``trained_spacing``): what training
records, and the warning about inputs whose output grid is far from it."""

from __future__ import annotations

import SimpleITK as sitk

from srrecnn_jax.geometry import header_warnings
from srrecnn_jax.train.loop import common_spacing


def image(spacing: tuple[float, float, float]) -> sitk.Image:
    result = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    result.SetSpacing(spacing)
    return result


def far(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "trained to produce" in w]


def test_volumes_of_one_isotropic_voxel_size_record_it():
    assert common_spacing([(1.0, 1.0, 1.0), (1.0, 1.0, 1.0004)]) == 1.0


def test_volumes_of_different_voxel_sizes_record_none():
    """One number would be wrong for some of them: none is recorded, nothing warns."""
    assert common_spacing([(1.0, 1.0, 1.0), (0.8, 0.8, 0.8)]) is None


def test_an_anisotropic_training_volume_records_none():
    assert common_spacing([(1.0, 1.0, 3.0)]) is None


def test_an_output_grid_near_the_trained_voxel_size_does_not_warn():
    """2 mm input at x2 -> 1 mm voxels, the size a 1 mm model learned to produce."""
    assert far(header_warnings(image((2.0, 2.0, 2.0)), "in.nii", 1.0, (2, 2, 2))) == []


def test_thick_slices_restored_to_the_trained_voxel_size_do_not_warn():
    """1 x 1 x 4 mm slices at 1x1x4 -> 1 mm voxels."""
    assert far(header_warnings(image((1.0, 1.0, 4.0)), "in.nii", 1.0, (1, 1, 4))) == []


def test_an_output_grid_over_twice_finer_than_trained_warns_naming_the_file():
    """1 mm input at x3 -> 0.33 mm voxels from a model that learned 1 mm anatomy."""
    warnings = far(header_warnings(image((1.0, 1.0, 1.0)), "in.nii", 1.0, (3, 3, 3)))
    assert len(warnings) == 1 and warnings[0].startswith("in.nii: spacing (1.0, 1.0, 1.0) mm")
    assert "(0.333, 0.333, 0.333) mm voxels" in warnings[0]


def test_one_axis_over_twice_coarser_than_trained_warns():
    """1 x 1 x 5 mm slices at x2 -> 2.5 mm along z from a 1 mm model."""
    assert len(far(header_warnings(image((1.0, 1.0, 5.0)), "in.nii", 1.0, (2, 2, 2)))) == 1


def test_an_unknown_trained_voxel_size_warns_about_nothing():
    assert far(header_warnings(image((1.0, 1.0, 1.0)), "in.nii", None, (3, 3, 3))) == []
