"""Scale parsing and the spline zoom of the original (scipy.ndimage.zoom, order 3)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from srrecnn_jax.degradation import degrade, modcrop
from srrecnn_jax.interpolation import zoom, zoomed_shape
from srrecnn_jax.scales import parse_scale


@pytest.mark.parametrize("text, expected", [("2", (2.0, 2.0, 2.0)), ("2,2,2.5", (2.0, 2.0, 2.5)),
                                            (" 1, 1 ,2 ", (1.0, 1.0, 2.0)), (3, (3.0, 3.0, 3.0)),
                                            ((2, 3, 4), (2.0, 3.0, 4.0))])
def test_parse_scale(text, expected):
    assert parse_scale(text) == expected


@pytest.mark.parametrize("text", ["0", "-2", "abc", "2,2", "2,2,2,2", "nan", "inf", "2,,2"])
def test_parse_scale_rejects(text):
    with pytest.raises(ValueError):
        parse_scale(text)


@pytest.mark.parametrize("shape, scale", [((5, 7, 9), (2.5, 2.5, 2.5)), ((33, 41, 25), (3, 3, 3)),
                                          ((6, 6, 6), (1, 1, 2)), ((7, 8, 9), (0.5, 0.5, 0.5))])
def test_zoomed_shape_is_scipys(shape, scale):
    """round(n * s) with Python's rounding, as scipy computes it."""
    assert zoomed_shape(shape, scale) == scipy.ndimage.zoom(np.zeros(shape), scale).shape


def test_zoom_is_scipy_zoom_on_float32():
    """The original zoomed float32 arrays with scipy's defaults; output stays float32."""
    volume = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    out = zoom(volume, (2, 2, 2.5))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, scipy.ndimage.zoom(volume, (2, 2, 2.5), order=3))


def test_modcrop_keeps_multiples_of_the_scale():
    assert modcrop(np.zeros((197, 233, 189)), (2, 2, 2)).shape == (196, 232, 188)
    assert modcrop(np.zeros((10, 11, 12)), (3, 3, 3)).shape == (9, 9, 12)


def test_modcrop_keeps_a_length_the_scale_divides_up_to_float_rounding():
    """110 / 4.4 is 24.999999999999996 in floats: still 25 slices of 4.4."""
    assert modcrop(np.zeros((110, 88, 12)), (4.4, 4.4, 2.5)).shape == (110, 88, 10)


def test_degrade_blurs_then_downsamples():
    """lr = zoom(gaussian_filter(hr, 1) cropped, 1/2); hr is cropped to match."""
    hr = np.random.default_rng(0).random((11, 10, 9)).astype(np.float32)
    lr, hr_cropped = degrade(hr, (2, 2, 2))
    assert hr_cropped.shape == (10, 10, 8) and lr.shape == (5, 5, 4)
    blur = scipy.ndimage.gaussian_filter(hr, 1.0)[:10, :10, :8]
    np.testing.assert_array_equal(lr, scipy.ndimage.zoom(blur, 0.5, order=3))
