"""Observation models of real acquisitions (``degradation``): k-space truncation with the
scanners' filters, magnitude, Rician noise; and the training patches that use them."""

from __future__ import annotations

import numpy as np
import pytest

from srrecnn_jax import degradation
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.train import augment
from srrecnn_jax.train.config import AugmentConfig


def head_like(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An ellipsoid 'head' of tissue texture on a zero background: (x, y, z) float32."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = ((grid ** 2).sum(0) < 0.7).astype(np.float32)
    texture = 0.6 + 0.3 * np.sin(7 * grid[0]) * np.cos(5 * grid[1] + 3 * grid[2])
    return (inside * (texture + 0.05 * rng.standard_normal(shape))).astype(np.float32)


def fft_lowpass(volume: np.ndarray, scale, window: str) -> np.ndarray:
    """The independent formula: zero-pad to twice the size, 3-D FFT, multiply by the
    separable k-space weights, inverse 3-D FFT, crop, magnitude."""
    padded = np.zeros([2 * n for n in volume.shape])
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    spectrum = np.fft.fftn(padded)
    for axis, (n, s) in enumerate(zip(padded.shape, scale)):
        if s > 1:
            w = degradation.kspace_weights(np.fft.fftfreq(n), s, window)
            spectrum = spectrum * w.reshape([-1 if a == axis else 1 for a in range(3)])
    return np.abs(np.fft.ifftn(spectrum))[tuple(slice(0, n) for n in volume.shape)]


@pytest.mark.parametrize("window", degradation.KSPACE_WINDOWS)
@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 1, 3.5), (1.5, 2.5, 1)])
def test_kspace_lowpass_equals_the_3d_fft_formula(window, scale):
    """Per-axis matrices equal the 3-D FFT of the zero-padded volume, to 1e-5 of the
    range, for every window and isotropic, thick-slice and non-integer scales."""
    volume = head_like((24, 20, 18))
    ours = degradation.kspace_lowpass(volume, scale, window)
    np.testing.assert_allclose(ours, fft_lowpass(volume, scale, window), rtol=0, atol=1e-5)


def test_box_keeps_the_band_below_the_lr_nyquist_whole_and_removes_the_rest():
    """The point spread's spectrum (its DFT on the doubled grid) is 1 below 1 / (2 s)
    cycles per voxel, 0 above: no attenuation inside the band, unlike the Gaussian."""
    n = 2 * 40
    psf = np.fft.ifft(degradation.kspace_weights(np.fft.fftfreq(n), 2.0)).real
    response = np.fft.fft(psf).real
    f = np.abs(np.fft.fftfreq(n))
    np.testing.assert_allclose(response[f < 0.24], 1.0, atol=1e-12)
    np.testing.assert_allclose(response[f > 0.26], 0.0, atol=1e-12)


def test_windows_weigh_the_band_as_documented():
    """At r = |f| / f_c = 0, 0.5 and 0.95: hamming 1, 0.54, 0.0811; tukey 1, 1, 0.0245;
    fermi ~1, ~1, 0.269 (to 1e-3)."""
    cutoff = 0.25  # scale 2
    f = np.array([0.0, 0.5, 0.95]) * cutoff
    expected = {"none": [1, 1, 1], "hamming": [1, 0.54, 0.54 + 0.46 * np.cos(0.95 * np.pi)],
                "tukey": [1, 1, 0.5 * (1 + np.cos(np.pi * 0.45 / 0.5))],
                "fermi": [1 / (1 + np.exp(-18)), 1 / (1 + np.exp(-8)),
                          1 / (1 + np.exp(1))]}
    for window, values in expected.items():
        np.testing.assert_allclose(degradation.kspace_weights(f, 2.0, window), values,
                                   atol=1e-3, err_msg=window)


def test_scale_one_without_a_window_is_the_identity():
    volume = head_like((12, 10, 8))
    np.testing.assert_allclose(degradation.kspace_lowpass(volume, (1, 1, 1)), volume,
                               atol=0)


def test_kspace_observation_lies_on_the_release_grid():
    """``observe(psf="kspace")`` crops and samples as ``degrade``: same LR shape, and the
    spline zoom of its LR back up lies on the cropped HR: on a smooth volume (all its
    detail inside the kept band) within 1% RMS of the range, and at least 3 times
    closer than the HR moved by one voxel along x."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (33, 30, 28)],
                                indexing="ij"))
    hr = (np.exp(-(grid ** 2).sum(0) / 0.3) * (1 + 0.3 * np.sin(3 * grid[0]))
          ).astype(np.float32)
    lr_k, cropped = degradation.observe(hr, (2, 2, 2), psf="kspace")
    lr_g, cropped_g = degradation.degrade(hr, (2, 2, 2))
    assert lr_k.shape == lr_g.shape and np.array_equal(cropped, cropped_g)
    back = zoom(lr_k, [a / b for a, b in zip(cropped.shape, lr_k.shape)], 3)
    rms = np.sqrt(np.mean((back - cropped) ** 2)) / np.ptp(cropped)
    moved = np.sqrt(np.mean((back[1:] - cropped[:-1]) ** 2)) / np.ptp(cropped)
    assert rms < 0.01 and moved > 3 * rms, (rms, moved)


def test_observe_gaussian_is_the_release_model():
    hr = head_like((20, 20, 20))
    lr, cropped = degradation.observe(hr, (2, 2, 2))
    expected, expected_hr = degradation.degrade(hr, (2, 2, 2))
    np.testing.assert_array_equal(lr, expected)
    np.testing.assert_array_equal(cropped, expected_hr)


def test_observe_noise_is_rician_of_sigma_percent_of_the_hr_maximum_and_seeded():
    """On a zero LR the noise is Rayleigh: its mean is sigma sqrt(pi / 2) (to 2% on 8k
    voxels), sigma = noise x HR maximum; the same seed gives the same image."""
    hr = np.zeros((40, 40, 40), np.float32)
    hr[0, 0, 0] = 2.0  # the maximum; the LR far from it stays ~0
    lr, _ = degradation.observe(hr, (2, 2, 2), psf="kspace", noise=0.03, seed=5)
    far = lr[5:, 5:, 5:]
    assert abs(far.mean() / (0.03 * 2.0 * np.sqrt(np.pi / 2)) - 1) < 0.02
    again, _ = degradation.observe(hr, (2, 2, 2), psf="kspace", noise=0.03, seed=5)
    np.testing.assert_array_equal(lr, again)


def test_unknown_psf_or_window_is_refused_by_name():
    with pytest.raises(ValueError, match="psf"):
        degradation.observe(head_like((8, 8, 8)), (2, 2, 2), psf="box")
    with pytest.raises(ValueError, match="window"):
        degradation.kspace_weights(np.zeros(3), 2.0, "hann")


def test_kspace_patch_equals_the_whole_volume_model_when_the_block_is_the_volume():
    """A 20^3 volume is smaller than patch 9 plus the k-space margins, so the block is the
    volume: the per-patch k-space path (float32 matrices, magnitude, spline back up) equals
    ``observe(psf="kspace")`` then the spline zoom, to 1e-5, on the patch."""
    hr = head_like((20, 20, 20))
    config = AugmentConfig(kspace=1.0, kspace_windows=("hamming",))
    data, label = augment.degraded_patch(hr, (5, 6, 4), 9, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0),
                                         3, config, np.random.default_rng(0))
    lr, cropped = degradation.observe(hr, (2, 2, 2), psf="kspace", window="hamming")
    back = zoom(lr, [a / b for a, b in zip(cropped.shape, lr.shape)], 3)
    np.testing.assert_allclose(data[0], back[5:14, 6:15, 4:13], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(label[0], cropped[5:14, 6:15, 4:13])


def test_kspace_probability_mixes_the_two_point_spreads():
    """With kspace = 0.5, about half of 40 patches take the k-space point spread: their
    inputs differ from the Gaussian-only inputs of the same draws, the others equal them."""
    hr = head_like((20, 20, 20))
    mixed = AugmentConfig(kspace=0.5, noise=(0.0, 0.0), gamma=(1.0, 1.0))
    changed = 0
    for seed in range(40):
        a, _ = augment.degraded_patch(hr, (5, 5, 5), 9, (2.0,) * 3, (1.0,) * 3, 3, mixed,
                                      np.random.default_rng(seed))
        b, _ = augment.degraded_patch(hr, (5, 5, 5), 9, (2.0,) * 3, (1.0,) * 3, 3,
                                      AugmentConfig(), np.random.default_rng(seed))
        changed += not np.allclose(a, b, atol=1e-6)
    assert 10 <= changed <= 30, changed
