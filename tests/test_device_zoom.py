"""The on-device zoom: scipy's cubic-spline zoom as three per-axis matrix products in JAX."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from srrecnn_jax.images import to_array
from srrecnn_jax.interpolation import zoom, zoom_device, zoom_matrix, zoomed_shape

SCALES = [(2, 2, 2), (3, 3, 3), (2.5, 2.5, 2.5), (1, 1, 2)]


@pytest.fixture
def crop13(anatomical) -> np.ndarray:
    """A 13 x 17 x 11 float64 crop of the real 2 mm T1 (non-cubic, odd sizes)."""
    return to_array(anatomical, np.float64)[10:23, 12:29, 7:18]


def rel_err(a, b, volume) -> float:
    """max |a - b| relative to the volume's value range."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.ptp(volume))


def apply_matrices(volume: np.ndarray, out_shape, order: int = 3) -> np.ndarray:
    mx, my, mz = (zoom_matrix(n, m, order) for n, m in zip(volume.shape, out_shape))
    return np.einsum("ai,bj,ck,ijk->abc", mx, my, mz, volume, optimize=True)


@pytest.mark.parametrize("scale", SCALES)
def test_matrices_along_each_axis_are_scipy_zoom(crop13, scale):
    """Float64 matrices, one per axis, equal scipy.ndimage.zoom (order 3) to 1e-12 of the range."""
    expected = scipy.ndimage.zoom(crop13, scale, order=3)
    assert rel_err(apply_matrices(crop13, expected.shape), expected, crop13) <= 1e-12


def test_order_1_matrices_are_scipy_linear_zoom(crop13):
    """The same construction holds for order 1 (linear), to 1e-12 of the range."""
    expected = scipy.ndimage.zoom(crop13, (2, 2.5, 3), order=1)
    assert rel_err(apply_matrices(crop13, expected.shape, order=1), expected, crop13) <= 1e-12


@pytest.mark.parametrize("n", [1, 2, 5, 33, 64])
def test_matrix_for_same_length_is_identity(n):
    np.testing.assert_allclose(zoom_matrix(n, n), np.eye(n), rtol=0, atol=1e-12)


def test_matrix_is_cached_and_read_only():
    matrix = zoom_matrix(7, 17)
    assert matrix.shape == (17, 7) and matrix.dtype == np.float64
    assert zoom_matrix(7, 17) is matrix
    with pytest.raises(ValueError):
        matrix[0, 0] = 1.0


@pytest.mark.parametrize("scale", SCALES)
def test_zoom_device_is_scipy_zoom_to_float32_rounding(crop13, scale):
    """float32 on the device vs scipy on float64 input: <= 1e-5 of the volume's range."""
    expected = zoom(crop13, scale)
    out = zoom_device(crop13.astype(np.float32), scale)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert rel_err(out, expected, crop13) <= 1e-5


def test_zoom_device_on_full_scan_with_anisotropic_scale(anatomical):
    """The whole 33 x 41 x 25 scan, factors (2, 2.5, 3): <= 1e-5 of the range."""
    volume = to_array(anatomical, np.float64)
    expected = zoom(volume, (2, 2.5, 3))
    assert rel_err(zoom_device(volume, (2, 2.5, 3)), expected, volume) <= 1e-5


@pytest.mark.parametrize("shape", [(5, 7, 9), (13, 17, 11), (1, 3, 2)])
def test_zoom_device_shape_is_zoomed_shape(shape):
    out = zoom_device(np.zeros(shape, np.float32), 2.5)
    assert out.shape == zoomed_shape(shape, (2.5, 2.5, 2.5))


def test_zoom_device_stays_on_the_volumes_device():
    """A volume committed to the second device is zoomed there (conftest gives 2 CPU devices)."""
    import jax

    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs 2 devices")
    volume = jax.device_put(np.ones((4, 5, 6), np.float32), devices[1])
    assert zoom_device(volume, 2).devices() == {devices[1]}


def test_zoom_device_rejects_empty_output_and_non_3d():
    with pytest.raises(ValueError):
        zoom_device(np.zeros((1, 4, 4), np.float32), 0.4)
    with pytest.raises(ValueError):
        zoom_device(np.zeros((4, 4), np.float32), 2)
