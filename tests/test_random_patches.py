"""On-the-fly training patches from images (no HDF5): deterministic per step, shared by rank."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from srrecnn_jax.train.data import RandomPatches


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    return [scipy.ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
            for shape in ((24, 22, 20), (20, 26, 18))]


def test_a_step_always_gives_the_same_batch(volumes):
    patches = RandomPatches(volumes, [2, 3], patch=9)
    np.testing.assert_array_equal(patches.batch(7, 6)["data"], patches.batch(7, 6)["data"])
    assert not np.array_equal(patches.batch(7, 6)["data"], patches.batch(8, 6)["data"])


def test_process_shares_make_the_global_batch(volumes):
    patches = RandomPatches(volumes, [2], patch=9)
    whole = patches.batch(3, 8)
    shares = [patches.batch(3, 8, process=p, processes=2) for p in (0, 1)]
    for key in ("data", "label"):
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), whole[key])


def test_patches_are_channels_last_pairs_of_interpolated_and_hr(volumes):
    """Label patches are crops of the [0, 1]-rescaled HR volume; data the spline of its LR."""
    patches = RandomPatches(volumes[:1], [2], patch=9)
    batch = patches.batch(0, 4)
    assert batch["data"].shape == batch["label"].shape == (4, 9, 9, 9, 1)
    hr = volumes[0][:24, :22, :20]
    unit = (hr - hr.min()) / (hr.max() - hr.min())
    windows = np.lib.stride_tricks.sliding_window_view(unit, (9, 9, 9))
    label = batch["label"][0, ..., 0]
    assert np.any(np.all(np.abs(windows - label) < 1e-6, axis=(3, 4, 5)))


def _assert_pairs_are_windows(batch: dict, unit: np.ndarray, spline: np.ndarray) -> None:
    """Each label is a 9^3 window of ``unit`` (to 1e-6) and its data the window of
    ``spline`` at the same place (to 1e-5: float32 arithmetic in the package)."""
    label_windows = np.lib.stride_tricks.sliding_window_view(unit, (9, 9, 9))
    spline_windows = np.lib.stride_tricks.sliding_window_view(spline, (9, 9, 9))
    for data, label in zip(batch["data"][..., 0], batch["label"][..., 0]):
        error = np.abs(label_windows - label).max(axis=(3, 4, 5))
        place = np.unravel_index(np.argmin(error), error.shape)
        assert error[place] < 1e-6
        np.testing.assert_allclose(data, spline_windows[place], rtol=0, atol=1e-5)


def test_data_is_the_spline_of_the_degraded_label_at_the_same_place(volumes):
    """The original observation model, written out here with scipy in float64: blur
    (sigma 1 voxel), cubic-spline downsampling by 2, cubic-spline zoom back up.
    Tolerance 1e-5 (float32 arithmetic in the package)."""
    patches = RandomPatches(volumes[:1], [2], patch=9)
    batch = patches.batch(5, 3)
    hr = volumes[0].astype(np.float64)  # (24, 22, 20): already a multiple of 2
    unit = (hr - hr.min()) / (hr.max() - hr.min())
    lr = scipy.ndimage.zoom(scipy.ndimage.gaussian_filter(unit, 1.0), 0.5, order=3)
    spline = scipy.ndimage.zoom(lr, 2, order=3)
    _assert_pairs_are_windows(batch, unit, spline)


def test_two_channel_patches_with_a_second_modality(volumes):
    other = [v[::-1].copy() for v in volumes]
    patches = RandomPatches(volumes, [2], patch=9, others=other)
    assert patches.channels == 2
    assert patches.batch(0, 2)["data"].shape == (2, 9, 9, 9, 2)


def test_thick_slice_patches_are_the_slice_profile_degradation_at_the_same_place(volumes):
    """Scale [1, 1, 2] with ``blur="slice_profile"``, written out with scipy in float64:
    blur along z only (sigma 2 / 2.3548, the FWHM of 2 voxels), cubic-spline zoom by
    (1, 1, 1/2) and back. Tolerance 1e-5 (float32 arithmetic in the package)."""
    patches = RandomPatches(volumes[:1], [(1, 1, 2)], patch=9, blur="slice_profile")
    batch = patches.batch(2, 3)
    hr = volumes[0].astype(np.float64)  # (24, 22, 20): z already a multiple of 2
    unit = (hr - hr.min()) / (hr.max() - hr.min())
    blurred = scipy.ndimage.gaussian_filter1d(unit, 2 / 2.3548200450309493, axis=2)
    lr = scipy.ndimage.zoom(blurred, (1, 1, 0.5), order=3)
    spline = scipy.ndimage.zoom(lr, (1, 1, 2), order=3)
    _assert_pairs_are_windows(batch, unit, spline)


def test_thick_slices_leave_the_plane_unblurred():
    """An image with in-plane detail only (constant along z) keeps all of it through
    [1, 1, 4] thick slices: data equals label to 1e-5."""
    plane = scipy.ndimage.gaussian_filter(np.random.default_rng(1).random((20, 20)), 0.7)
    volume = np.repeat(plane[:, :, None], 24, axis=2).astype(np.float32)
    batch = RandomPatches([volume], [[1, 1, 4]], patch=9, blur="slice_profile").batch(0, 4)
    np.testing.assert_allclose(batch["data"], batch["label"], rtol=0, atol=1e-5)
    assert batch["label"].std() > 0.05  # there is in-plane detail to lose


def test_a_volume_with_scales_of_its_own_is_cut_only_at_them(volumes):
    """``volume_scales`` overrides the common scales for that volume: with x3 of its
    own, the batches are exactly those of a set whose only scale is 3."""
    own = RandomPatches(volumes[:1], [2], patch=9, volume_scales=[[3]]).batch(4, 6)
    only = RandomPatches(volumes[:1], [3], patch=9).batch(4, 6)
    for key in ("data", "label"):
        np.testing.assert_array_equal(own[key], only[key])


def test_scales_of_their_own_draw_each_volume_and_scale_entry_once(volumes):
    """Volume 0 at the common x2, volume 1 at x2 and x3 of its own: three (volume,
    scale) entries to draw from, and both scales recorded as trained."""
    patches = RandomPatches(volumes, [2], patch=9, volume_scales=[None, [2, 3]])
    assert patches.entries == [(0, 0), (1, 0), (1, 1)]
    assert patches.scales == (2.0, 3.0)
