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
    assert np.abs(batch["data"] - batch["label"]).mean() < 0.1  # close, not equal
    assert not np.array_equal(batch["data"], batch["label"])


def test_two_channel_patches_with_a_second_modality(volumes):
    other = [v[::-1].copy() for v in volumes]
    patches = RandomPatches(volumes, [2], patch=9, others=other)
    assert patches.channels == 2
    assert patches.batch(0, 2)["data"].shape == (2, 9, 9, 9, 2)
