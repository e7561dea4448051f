"""A thick-slice model (trained at 1x1xs: slices along z) asked for slices along x or y
runs with that axis swapped into z, and its result swapped back."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import crop

from srrecnn_jax import model
from srrecnn_jax.checkpoint import LoadedModel
from srrecnn_jax.config import recnn
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import SuperResolver, super_resolve_array
from srrecnn_jax.scales import slice_axes

THICK_Z = [[1.0, 1.0, 2.0], [1.0, 1.0, 3.0]]


@pytest.mark.parametrize("factors, axes", [((2, 1, 1), (2, 1, 0)), ((1, 3, 1), (0, 2, 1))])
def test_slices_along_x_or_y_swap_that_axis_with_z(factors, axes):
    assert slice_axes(THICK_Z, factors) == axes


@pytest.mark.parametrize("trained, factors", [
    (THICK_Z, (1, 1, 2)),  # already along z
    (THICK_Z, (2, 2, 2)),  # not thick slices
    ([2.0], (2, 1, 1)),  # an isotropic model
    (None, (2, 1, 1)),  # scales unknown
    ([2.0, [1.0, 1.0, 2.0]], (2, 1, 1)),  # not a thick-slice model only
])
def test_other_requests_run_the_volume_as_it_is(trained, factors):
    assert slice_axes(trained, factors) is None


def test_slices_along_x_equal_the_model_run_on_the_swapped_volume(anatomical):
    """``SuperResolver.run`` at (2, 1, 1) equals ``super_resolve_array`` at (1, 1, 2) on the
    volume with x and z swapped, swapped back: to 1e-5 of the range (zoom order differs)."""
    config = recnn(layers=3, filters=8)
    params = model.init(jax.random.key(4), config)
    resolver = SuperResolver(LoadedModel(params, config, trained_scales=THICK_Z))
    image = crop(anatomical, (8, 10, 6), (12, 14, 10))
    ours = to_array(resolver.run(image, (2, 1, 1)))
    swapped = super_resolve_array(params, config, to_array(image).transpose(2, 1, 0),
                                  (1, 1, 2)).transpose(2, 1, 0)
    assert ours.shape == (24, 14, 10)
    assert np.abs(ours - swapped).max() <= 1e-5 * np.ptp(swapped)
    plain = super_resolve_array(params, config, to_array(image), (2, 1, 1))
    assert np.abs(ours - plain).max() > 1e-3 * np.ptp(plain)  # the swap changed something
