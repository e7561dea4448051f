"""Which requested scales a model was trained for (``scales.untrained_scale``): the
run notes of batch mode warn about the others."""

from __future__ import annotations

import pytest

from srrecnn_jax.scales import format_scales, untrained_scale


@pytest.mark.parametrize("scale", [(2, 2, 2), (2.5, 2.5, 2.5), (2, 2, 2.5)])
def test_isotropic_training_scales_cover_every_axis_factor_among_them(scale):
    assert not untrained_scale([2.0, 2.5], scale)


@pytest.mark.parametrize("scale", [(3, 3, 3), (2, 2, 1)])
def test_an_axis_factor_outside_the_isotropic_scales_is_untrained(scale):
    assert untrained_scale([2.0, 2.5], scale)


def test_a_thick_slice_scale_must_match_a_trained_triple():
    trained = [[1.0, 1.0, 2.0], [1.0, 1.0, 4.0]]
    assert not untrained_scale(trained, (1, 1, 4))
    assert untrained_scale(trained, (1, 1, 3))
    assert untrained_scale(trained, (2, 2, 2))  # each factor was trained, the triple was not
    assert untrained_scale(trained, (2, 1, 4))


def test_a_thick_slice_scale_along_another_axis_is_trained():
    """(4, 1, 1) to a model trained at (1, 1, 4): run with x and z swapped."""
    assert not untrained_scale([[1.0, 1.0, 4.0]], (4, 1, 1))
    assert not untrained_scale([[1.0, 1.0, 4.0]], (1, 4, 1))
    assert untrained_scale([[1.0, 1.0, 4.0]], (3, 1, 1))


def test_unknown_training_scales_warn_about_nothing():
    assert not untrained_scale(None, (3, 3, 3))


def test_scales_print_as_numbers_and_x_separated_triples():
    assert format_scales([2.0, 2.5, [1.0, 1.0, 4.0]]) == "2, 2.5, 1x1x4"


def test_a_moved_thick_axis_counts_only_where_the_volume_is_swapped():
    """A model with an isotropic scale too is not a thick-slice model: (4, 1, 1) is not
    swapped for it (``slice_axes``), so it is a scale it was not trained for."""
    assert untrained_scale([2.0, [1.0, 1.0, 4.0]], (4, 1, 1))
