"""Per-scan checks (``guardrails``): the noise estimate, the spectral fall-off, and the
self-check that predicts whether a model beats cubic spline on a scan."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from srrecnn_jax import config as configs
from srrecnn_jax import degradation, guardrails, model


def brain_like(shape=(64, 64, 48)) -> np.ndarray:
    """Smooth tissue classes inside an ellipsoid, on a zero background, max 1: an image
    whose own detail at the finest scale is small beside a 1% noise."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    folds = 0.5 + 0.25 * np.sin(6 * grid[0] + 2 * np.sin(4 * grid[1])) * np.cos(5 * grid[2])
    volume = np.where(r < 0.8, folds, 0.0) + np.where(r < 0.3, 0.3, 0.0)
    import scipy.ndimage

    volume = scipy.ndimage.gaussian_filter(volume, 1.0)
    return (volume / volume.max()).astype(np.float32)


@pytest.mark.parametrize("percent", [1.0, 2.0, 3.0])
def test_noise_estimate_finds_rician_noise_within_15_percent(percent):
    """Rician noise of sigma 1, 2, 3 % of the maximum on a smooth brain-like volume is
    estimated within 15% of its sigma (the anatomy's own fine detail and edges bias it
    a little upward)."""
    clean = brain_like()
    noisy = degradation.rician_noise(clean, percent / 100, np.random.default_rng(1))
    estimate = guardrails.noise_percent(noisy) * noisy.max()  # % of the clean max (1)
    assert abs(estimate / percent - 1) < 0.15, estimate


def test_noise_estimate_of_a_clean_smooth_volume_is_near_zero():
    assert guardrails.noise_percent(brain_like()) < 0.2


def test_haar_diagonal_of_white_noise_has_its_sigma():
    """Orthonormal: N(0, 0.5) voxels give HHH coefficients of std 0.5 (to 2%, 32k)."""
    noise = np.random.default_rng(2).normal(0, 0.5, (64, 64, 64))
    d, _ = guardrails.haar_diagonal(noise)
    assert abs(d.std() / 0.5 - 1) < 0.02


def test_falloff_tells_a_kspace_acquisition_from_the_release_blur():
    """The same brain acquired at x2 by a scanner (k-space box) keeps at least 1.5 times
    the top band of its release-model (Gaussian) acquisition, relative to mid band."""
    hr = brain_like((96, 96, 80))
    gaussian, _ = degradation.observe(hr, (2, 2, 2), psf="gaussian")
    kspace, _ = degradation.observe(hr, (2, 2, 2), psf="kspace")
    assert guardrails.falloff(kspace) > 1.5 * guardrails.falloff(gaussian)


def test_self_check_of_the_identity_network_is_zero():
    """A model whose network outputs zero (all weights zero) with the residual is the
    spline itself: the self-check's gain is 0 dB, to 0.05 dB (the pipeline runs in
    float32 and clamps at the input's minimum, the float64 spline does not)."""
    config = configs.tiny()
    params = jax.tree_util.tree_map(np.zeros_like, model.init(jax.random.PRNGKey(0), config))
    lr = brain_like((24, 24, 20))
    assert guardrails.self_check_gain_db(params, config, lr, (2, 2, 2)) == pytest.approx(
        0.0, abs=0.05)


def test_self_check_of_a_harmful_network_is_negative():
    """A network that adds a constant 0.1 of the range everywhere loses to spline."""
    config = configs.tiny()
    params = jax.tree_util.tree_map(np.zeros_like, model.init(jax.random.PRNGKey(0), config))
    last = max(params, key=lambda n: int(n[4:]))
    params[last]["bias"] = np.full_like(params[last]["bias"], 0.1)
    lr = brain_like((24, 24, 20))
    assert guardrails.self_check_gain_db(params, config, lr, (2, 2, 2)) < -3


def test_self_check_refuses_a_multimodal_model():
    config = configs.tiny(in_channels=2)
    params = model.init(jax.random.PRNGKey(0), config)
    with pytest.raises(ValueError, match="monomodal"):
        guardrails.self_check_gain_db(params, config, brain_like((16, 16, 16)), (2, 2, 2))
