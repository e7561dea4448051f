"""The output header, and how a multimodal reference is put on the output grid.

``scipy.ndimage.zoom`` (``grid_mode=False``) maps output index ``j`` to input index
``j * (n_in - 1) / (n_out - 1)`` along each axis: the first and last voxel centres of
input and output coincide. With the default ``header="consistent"`` the output header
says so: output corner voxels lie at the input's corner voxels in physical space
(pipeline doc section 1.7). Positions are compared to 1e-6 mm.
"""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import crop, package_file, small_residual

from srrecnn_jax import config, inference, model
from srrecnn_jax.checkpoint import LoadedModel
from srrecnn_jax.geometry import zoomed_geometry
from srrecnn_jax.images import to_array, to_image
from srrecnn_jax.inference import SuperResolver

MM = 1e-6  # tolerance on physical positions, mm
SIZE = (8, 7, 5)  # SimpleITK (x, y, z); 7 * 2.5 = 17.5 and 5 * 2.5 = 12.5 test the rounding
SPACING = (1.2, 0.9, 3.0)
ORIGIN = (-12.5, 30.25, 7.0)
SCALES = [2, 3, 2.5, (2, 2, 2.5), (1, 1, 2)]


def _oblique_direction() -> tuple[float, ...]:
    return sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()


def oblique_image() -> sitk.Image:
    """An 8 x 7 x 5 float32 image, rotated, anisotropic, off the origin; smooth positive voxels."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SIZE), indexing="ij")
    values = 1.0 + 0.3 * np.sin(0.7 * x + 0.4 * y) + 0.2 * np.cos(0.9 * z) + 0.01 * x * y
    return to_image(values.astype(np.float32), SPACING, ORIGIN, _oblique_direction())


def _resolver(in_channels: int, zero: bool = False) -> SuperResolver:
    cfg = config.tiny(in_channels=in_channels)
    params = small_residual(model.init(jax.random.PRNGKey(0), cfg))
    if zero:
        params = jax.tree_util.tree_map(jnp.zeros_like, params)
    return SuperResolver(LoadedModel(params, cfg))


@pytest.fixture(scope="module")
def mono() -> SuperResolver:
    return _resolver(1)


@pytest.fixture(scope="module")
def multi() -> SuperResolver:
    return _resolver(2)


@functools.cache
def _outputs(scale, header: str) -> tuple[sitk.Image, sitk.Image]:
    """(input, output) of the tiny 1-channel model on the oblique image (computed once)."""
    image = oblique_image()
    return image, _resolver(1).run(image, scale, header=header)


def factors(scale) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.broadcast_to(np.asarray(scale, float), (3,)))


def corners(size) -> list[tuple[int, int, int]]:
    return [tuple(int(c) for c in corner) for corner in itertools.product(*((0, n - 1)
                                                                             for n in size))]


# --- header="consistent" (default) ------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_corners_keep_their_physical_position(scale):
    """All 8 corner voxel centres of the output lie on the input's, to 1e-6 mm."""
    image, out = _outputs(scale, "consistent")
    for c_in, c_out in zip(corners(image.GetSize()), corners(out.GetSize())):
        np.testing.assert_allclose(out.TransformIndexToPhysicalPoint(c_out),
                                   image.TransformIndexToPhysicalPoint(c_in), rtol=0, atol=MM)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_every_voxel_lies_where_zoom_samples(scale):
    """Output index j is at input continuous index j (n_in - 1) / (n_out - 1), to 1e-6 mm."""
    image, out = _outputs(scale, "consistent")
    n_in, n_out = np.array(image.GetSize()), np.array(out.GetSize())
    j = np.indices(n_out).reshape(3, -1).T  # every output index (x, y, z)
    source = j * (n_in - 1) / (n_out - 1)
    np.testing.assert_allclose(physical_points(out, j), physical_points(image, source),
                               rtol=0, atol=MM)


def physical_points(image: sitk.Image, index: np.ndarray) -> np.ndarray:
    """ITK's index-to-physical map for (N, 3) continuous indices: origin + D (spacing * i)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T


def test_physical_points_is_itks_map():
    image, _ = _outputs(SCALES[0], "consistent")
    index = np.array([[0, 0, 0], [1.5, 2, 0.25], [7, 6, 4]])
    np.testing.assert_allclose(
        physical_points(image, index),
        [image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index],
        rtol=0, atol=1e-9)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_direction_and_origin_kept_exactly(scale):
    """Direction cosines and origin are copied bit for bit."""
    image, out = _outputs(scale, "consistent")
    assert out.GetDirection() == image.GetDirection()
    assert out.GetOrigin() == image.GetOrigin()


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_spacing_is_consistent_with_zoom(scale):
    """Spacing is spacing_in (n_in - 1) / (n_out - 1) per axis, to 1e-12 relative."""
    image, out = _outputs(scale, "consistent")
    expected = [s * (a - 1) / (b - 1)
                for s, a, b in zip(image.GetSpacing(), image.GetSize(), out.GetSize())]
    np.testing.assert_allclose(out.GetSpacing(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_size_is_scipy_zoom_size(scale):
    """The output size is scipy.ndimage.zoom's, round(n * s) per axis (x, y, z)."""
    image, out = _outputs(scale, "consistent")
    expected = scipy.ndimage.zoom(np.zeros(SIZE, np.float32), factors(scale), order=0).shape
    assert out.GetSize() == expected
    assert out.GetSize() == tuple(round(n * s) for n, s in zip(SIZE, factors(scale)))


def test_size_rounds_half_to_even():
    """Scale 2.5 on 8 x 7 x 5 gives 20 x 18 x 12: 17.5 -> 18 and 12.5 -> 12, as scipy does."""
    assert _outputs(2.5, "consistent")[1].GetSize() == (20, 18, 12)


def test_anisotropic_scale_applies_to_simpleitk_z():
    """A scale of (1, 1, 2) doubles only SimpleITK's third size (z); x and y are kept."""
    image, out = _outputs((1, 1, 2), "consistent")
    assert out.GetSize() == (SIZE[0], SIZE[1], 2 * SIZE[2])
    assert out.GetSpacing()[:2] == image.GetSpacing()[:2]
    np.testing.assert_allclose(out.GetSpacing()[2], SPACING[2] * 4 / 9, rtol=1e-12)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_voxel_values_follow_the_header(scale):
    """With a zero network (output = zoom) the corner voxels carry the input's corner values.

    So the array is neither flipped nor transposed against its header (to 1e-5 relative).
    """
    image = oblique_image()
    out = _resolver(1, zero=True).run(image, scale)
    for c_in, c_out in zip(corners(image.GetSize()), corners(out.GetSize())):
        np.testing.assert_allclose(out[c_out], image[c_in], rtol=1e-5)


# --- header="original" ------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_original_header(scale):
    """header="original" writes spacing / scale with the input's origin and direction."""
    image, out = _outputs(scale, "original")
    np.testing.assert_allclose(out.GetSpacing(),
                               [s / f for s, f in zip(SPACING, factors(scale))],
                               rtol=1e-12, atol=0)
    assert out.GetOrigin() == image.GetOrigin()
    assert out.GetDirection() == image.GetDirection()
    assert out.GetSize() == _outputs(scale, "consistent")[1].GetSize()


def test_original_header_same_voxels_as_consistent():
    """The header mode changes only the header: the voxels are identical."""
    a, b = _outputs(2.5, "original")[1], _outputs(2.5, "consistent")[1]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


# --- real oblique scans -----------------------------------------------------------------


def _check_real(image: sitk.Image, resolver: SuperResolver, scale) -> None:
    image = sitk.Cast(image, sitk.sitkFloat32)
    out = resolver.run(image, scale)
    assert out.GetDirection() == image.GetDirection()
    for c_in, c_out in zip(corners(image.GetSize()), corners(out.GetSize())):
        np.testing.assert_allclose(out.TransformIndexToPhysicalPoint(c_out),
                                   image.TransformIndexToPhysicalPoint(c_in), rtol=0, atol=MM)


def test_real_oblique_scan_nibabel(mono):
    """nibabel's oblique example4d (2 x 2 x 2.2 mm, tilted): a 10 x 10 x 6 crop, scale 2.

    Corner voxels stay put to 1e-6 mm and the direction is kept exactly.
    """
    path = package_file("nibabel", "tests/data/example4d.nii.gz")
    volume = sitk.ReadImage(str(path))[:, :, :, 0]
    direction = np.reshape(volume.GetDirection(), (3, 3))
    assert np.abs(np.abs(direction) - np.eye(3)).max() > 0.1, "expected an oblique scan"
    _check_real(crop(volume, (60, 40, 8), (10, 10, 6)), mono, 2)


def test_real_oblique_scan_dipy(mono):
    """dipy's aniso_vox.nii.gz (anisotropic voxels): a small crop, scale (2, 2, 2.5)."""
    volume = sitk.ReadImage(str(package_file("dipy", "data/files/aniso_vox.nii.gz")))
    size = tuple(min(10, n) for n in volume.GetSize())
    lower = tuple((n - s) // 2 for n, s in zip(volume.GetSize(), size))
    _check_real(crop(volume, lower, size), mono, (2, 2, 2.5))


# --- the multimodal reference -----------------------------------------------------------


def _smooth(size, spacing, origin, direction) -> sitk.Image:
    """A positive, smooth function of physical position on the given grid."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), -1)
    matrix = np.reshape(direction, (3, 3)) * np.asarray(spacing)
    points = np.asarray(origin) + index @ matrix.T
    values = 2.0 + np.sin(0.2 * points[..., 0]) * np.cos(0.15 * points[..., 1]) \
        + 0.05 * points[..., 2]
    return to_image(values.astype(np.float32), spacing, origin, direction)


def _output_grid(scale) -> tuple[tuple[int, ...], tuple, tuple, tuple]:
    image = oblique_image()
    size = tuple(round(n * s) for n, s in zip(SIZE, factors(scale)))
    return (size, *zoomed_geometry(image, size, factors(scale)))


def test_reference_on_output_grid_used_as_is(multi):
    """A reference already on the output grid is used unchanged and nothing is logged.

    The result equals the array pipeline fed with the reference's own voxels (exactly).
    """
    size, spacing, origin, direction = _output_grid(2)
    reference = _smooth(size, spacing, origin, direction)
    messages: list[str] = []
    out = multi.run(oblique_image(), 2, reference, log=messages.append)
    assert messages == []
    expected = inference.super_resolve_array(multi.model.params, multi.config,
                                             to_array(oblique_image()), (2.0,) * 3,
                                             to_array(reference))
    np.testing.assert_array_equal(to_array(out), expected)


def test_reference_read_back_from_nifti_counts_as_on_grid(multi, tmp_path):
    """A reference on the output grid, saved as NIfTI (float32 header), needs no resampling."""
    size, spacing, origin, direction = _output_grid((2, 2, 2.5))
    path = tmp_path / "t2.nii.gz"
    sitk.WriteImage(_smooth(size, spacing, origin, direction), str(path))
    messages: list[str] = []
    multi.run(oblique_image(), (2, 2, 2.5), sitk.ReadImage(str(path)), log=messages.append)
    assert messages == []


@pytest.mark.parametrize("scale", [2, (2, 2, 2.5)], ids=str)
def test_reference_on_another_grid_is_resampled(multi, scale):
    """A reference on another (overlapping) grid is resampled onto the output grid.

    Exactly one message, naming the reference; the result equals running with the reference
    resampled beforehand by sitk.Resample (linear, 0 outside) onto the output grid, to 1e-5
    relative, and that run logs nothing.
    """
    image = oblique_image()
    # the HR "T2": 0.7 mm isotropic, axis-aligned, shifted, covering most of the input
    reference = _smooth((22, 22, 22), (0.7, 0.7, 0.7),
                        np.asarray(image.TransformContinuousIndexToPhysicalPoint((1, 1, 1)))
                        - 6.0, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    messages: list[str] = []
    out = multi.run(image, scale, reference, reference_name="t2_hr.nii.gz", log=messages.append)
    assert len(messages) == 1 and "t2_hr.nii.gz" in messages[0], messages

    by_hand = sitk.Resample(reference, out, sitk.Transform(), sitk.sitkLinear, 0.0,
                            sitk.sitkFloat32)
    again: list[str] = []
    expected = multi.run(image, scale, by_hand, log=again.append)
    assert again == []
    np.testing.assert_allclose(to_array(out), to_array(expected), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_reference_coverage_on_a_large_grid():
    """Resampling onto a 340 x 340 x 300 grid reports the exact covered fraction (1/8).

    Run in a subprocess, as the bug this guards against crashes the interpreter: reading
    the coverage through a view of a temporary image freed before the read gave garbage,
    and a SIGSEGV on grids over 32 MiB.
    """
    code = """if True:
        import numpy as np, SimpleITK as sitk
        from srrecnn_jax.geometry import resample_onto, zoomed_geometry
        from srrecnn_jax.images import to_array, to_image
        reference = sitk.GetImageFromArray(np.ones((150, 170, 170), np.float32))
        _, covered = resample_onto(reference, (340, 340, 300), (1, 1, 1), (0, 0, 0),
                                      (1, 0, 0, 0, 1, 0, 0, 0, 1), "ref")
        print(repr(covered))
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]}"
    assert float(result.stdout) == 0.125
