"""On-the-fly augmentations of random patches: each off by default, each acting where it
should (label and input, or input only), pairs kept aligned, batches still a function of
the step. Small smoothed random volumes; tolerances stated per test."""

from __future__ import annotations

import itertools
import json
import tomllib

import numpy as np
import pytest
import scipy.ndimage

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.train import augment
from srrecnn_jax.train.config import AugmentConfig, config_from
from srrecnn_jax.train.data import RandomPatches, check_degradable
from srrecnn_jax.train.settings import parse_override

ALL_ON = AugmentConfig(gamma=(0.7, 1.4), bias_field=0.2, noise=(0.01, 0.03), blur_jitter=0.2,
                       flips=True)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    return [scipy.ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
            for shape in ((24, 22, 20), (20, 26, 18))]


@pytest.fixture(scope="module")
def big():
    """A 40^3 volume: room for the per-patch blocks' margins."""
    rng = np.random.default_rng(3)
    return scipy.ndimage.gaussian_filter(rng.random((40, 40, 40)), 2.0).astype(np.float32)


def unit(volume: np.ndarray) -> np.ndarray:
    return (volume - volume.min()) / (volume.max() - volume.min())


@pytest.mark.parametrize("settings", [
    {}, {"gamma": (1.0, 1.0)}, {"noise": (0.0, 0.0)}, {"hr_noise": (0.0, 0.0)},
    {"bias_field": 0.0}, {"blur_jitter": 0.0}, {"flips": False, "permute": False},
], ids=["default", "gamma 1", "noise 0", "hr noise 0", "bias 0", "jitter 0", "no flips"])
def test_augmentations_off_leave_batches_bit_identical(volumes, settings):
    plain = RandomPatches(volumes, [2, 3], patch=9).batch(4, 6)
    off = RandomPatches(volumes, [2, 3], patch=9, augment=AugmentConfig(**settings)).batch(4, 6)
    for key in ("data", "label"):
        np.testing.assert_array_equal(off[key], plain[key])


def test_per_patch_degradation_is_the_whole_volume_model_when_the_block_is_the_volume(
        volumes):
    """A 24 x 22 x 20 volume is smaller than patch 9 plus the margins, so each block is the
    whole volume: the per-patch path (float32 matrices) equals ``degrade`` + spline
    (scipy) to 1e-5."""
    whole = RandomPatches(volumes[:1], [2], patch=9).batch(1, 1)
    rng = np.random.default_rng([0, 1, 0])  # sample 0 of step 1: volume, then corner
    rng.integers(1)
    corner = tuple(int(rng.integers(n - 9 + 1)) for n in (24, 22, 20))
    data, label = augment.degraded_patch(unit(volumes[0]), corner, 9, (2.0, 2.0, 2.0),
                                         (1.0, 1.0, 1.0), 3, AugmentConfig(), rng)
    np.testing.assert_array_equal(label[0], whole["label"][0, ..., 0])
    np.testing.assert_allclose(data[0], whole["data"][0, ..., 0], rtol=0, atol=1e-5)


def test_gamma_raises_label_and_input_to_one_power_in_range(big):
    """Scale 1 with no blur: the input is the augmented HR itself (to 1e-6), and the label
    is the unaugmented label to one power g in [0.5, 2] (g agrees over the patch to 1e-3
    where the intensity is in [0.05, 0.95])."""
    plain = RandomPatches([big], [1], patch=9, blur="slice_profile").batch(0, 4)
    gamma = RandomPatches([big], [1], patch=9, blur="slice_profile",
                          augment=AugmentConfig(gamma=(0.5, 2.0))).batch(0, 4)
    np.testing.assert_allclose(gamma["data"], gamma["label"], rtol=0, atol=1e-6)
    powers = []
    for before, after in zip(plain["label"], gamma["label"]):
        inside = (before > 0.05) & (before < 0.95)
        g = np.log(after[inside]) / np.log(before[inside])
        assert np.ptp(g) < 1e-3
        powers.append(np.median(g))
    assert all(0.5 <= g <= 2.0 for g in powers) and np.ptp(powers) > 0.01


def test_gamma_reaches_the_input_through_the_degradation(big):
    """At scale 2 the input is degraded from the gamma'd HR: its mean follows the label's
    (to 0.01) and moves with it away from the unaugmented input's."""
    plain = RandomPatches([big], [2], patch=9).batch(0, 8)
    gamma = RandomPatches([big], [2], patch=9, augment=AugmentConfig(gamma=(2.0, 2.0)))
    batch = gamma.batch(0, 8)
    np.testing.assert_allclose(batch["data"].mean(axis=(1, 2, 3, 4)),
                               batch["label"].mean(axis=(1, 2, 3, 4)), rtol=0, atol=0.01)
    np.testing.assert_allclose(batch["label"], plain["label"] ** 2, rtol=0, atol=1e-6)


def test_noise_changes_the_input_only_at_its_level():
    """Rician noise of sigma 0.02 on a flat 0.5 image at scale 1 (no blur, no zoom): labels
    untouched, input minus label has std 0.02 to 5% and mean sqrt(0.5^2 + s^2) - 0.5 (4e-4)
    to 3e-4 over 8 patches of 9^3 voxels."""
    volume = np.full((30, 30, 30), 0.5, np.float32)
    volume[0, 0, 0], volume[-1, -1, -1] = 0.0, 1.0  # min-max: the flat part stays 0.5
    plain = RandomPatches([volume], [1], patch=9, blur="slice_profile").batch(0, 8)
    noisy = RandomPatches([volume], [1], patch=9, blur="slice_profile",
                          augment=AugmentConfig(noise=(0.02, 0.02))).batch(0, 8)
    np.testing.assert_array_equal(noisy["label"], plain["label"])
    flat = plain["label"] == 0.5
    residual = (noisy["data"] - noisy["label"])[flat]
    assert abs(residual.std() / 0.02 - 1) < 0.05
    assert abs(residual.mean() - (np.hypot(0.5, 0.02) - 0.5)) < 3e-4


def test_hr_noise_reaches_label_and_input_at_its_level():
    """Rician noise of sigma 0.02 on the HR of a flat 0.5 image at scale 1 (no blur, no
    zoom): the input is the noisy label itself (to 1e-6), and label minus the plain label
    has std 0.02 to 5% over 8 patches of 9^3 voxels."""
    volume = np.full((30, 30, 30), 0.5, np.float32)
    volume[0, 0, 0], volume[-1, -1, -1] = 0.0, 1.0  # min-max: the flat part stays 0.5
    plain = RandomPatches([volume], [1], patch=9, blur="slice_profile").batch(0, 8)
    noisy = RandomPatches([volume], [1], patch=9, blur="slice_profile",
                          augment=AugmentConfig(hr_noise=(0.02, 0.02))).batch(0, 8)
    np.testing.assert_allclose(noisy["data"], noisy["label"], rtol=0, atol=1e-6)
    flat = plain["label"] == 0.5
    assert abs((noisy["label"] - plain["label"])[flat].std() / 0.02 - 1) < 0.05


def test_hr_noise_is_smoothed_by_the_degradation(big):
    """At scale 2 (blur sigma 1, spline down and up) the input carries the HR noise
    blurred: input minus plain input has less than half the std of label minus plain
    label, and more than a tenth of it."""
    plain = RandomPatches([big], [2], patch=9).batch(0, 8)
    noisy = RandomPatches([big], [2], patch=9,
                          augment=AugmentConfig(hr_noise=(0.03, 0.03))).batch(0, 8)
    label_noise = (noisy["label"] - plain["label"]).std()
    input_noise = (noisy["data"] - plain["data"]).std()
    assert 0.1 * label_noise < input_noise < 0.5 * label_noise


def test_rician_noise_at_zero_is_rayleigh():
    """At intensity 0 the magnitude of the noise is Rayleigh: mean sigma sqrt(pi / 2),
    to 2% over 64^3 voxels."""
    noise = augment.rician(np.zeros((64, 64, 64), np.float32), 0.03, np.random.default_rng(0))
    assert abs(noise.mean() / (0.03 * np.sqrt(np.pi / 2)) - 1) < 0.02


@pytest.mark.parametrize("settings", [{"noise": (0.01, 0.03)}, {"blur_jitter": 0.3}])
def test_acquisition_augmentations_change_the_input_only(big, settings):
    """Noise and blur jitter act on the acquisition: labels bit-identical to the plain
    batch, inputs different (by more than 1e-3 somewhere)."""
    plain = RandomPatches([big], [2], patch=9).batch(0, 4)
    changed = RandomPatches([big], [2], patch=9, augment=AugmentConfig(**settings)).batch(0, 4)
    np.testing.assert_array_equal(changed["label"], plain["label"])
    assert np.abs(changed["data"] - plain["data"]).max() > 1e-3


def test_bias_field_multiplies_label_by_a_smooth_positive_field(big):
    """Labels are the plain labels times a field in [exp(-9 b), exp(9 b)] that varies by
    less than 2% between neighbouring voxels (b = 0.2)."""
    plain = RandomPatches([big], [2], patch=9).batch(0, 4)
    biased = RandomPatches([big], [2], patch=9,
                           augment=AugmentConfig(bias_field=0.2)).batch(0, 4)
    inside = plain["label"] > 0.05
    field = np.where(inside, biased["label"] / np.where(inside, plain["label"], 1), 1.0)
    assert np.all((field[inside] >= np.exp(-1.8)) & (field[inside] <= np.exp(1.8)))
    assert np.abs(np.diff(field[0, ..., 0], axis=0))[inside[0, 1:, ..., 0]
                                                     & inside[0, :-1, ..., 0]].max() < 0.02
    assert np.abs(field[inside] - 1).max() > 0.01
    assert not np.array_equal(biased["data"], plain["data"])


def test_bias_field_factors_equal_the_polynomial_formula():
    """The per-patch product of 1-D and 2-D factors equals exp(sum_k c_k m_k(u)) to 1e-6."""
    c = np.random.default_rng(2).uniform(-0.3, 0.3, 9)
    shape, start, size = (30, 40, 50), (3, 5, 7), (9, 10, 11)
    u = [2.0 * np.arange(a, a + n) / (total - 1) - 1.0 for a, n, total in zip(start, size, shape)]
    log = np.zeros(size)
    for ck, (i, j, k) in zip(c, augment.BIAS_TERMS):
        log += ck * u[0][:, None, None] ** i * u[1][None, :, None] ** j * u[2][None, None, :] ** k
    np.testing.assert_allclose(augment.bias_field(shape, start, size, c), np.exp(log),
                               rtol=1e-6, atol=0)


def test_flips_and_permutations_keep_pairs_aligned(volumes):
    """Each augmented pair is the plain pair at the same place with one of the 48
    flip/permutation combinations applied to data and label alike (exactly)."""
    plain = RandomPatches(volumes, [2], patch=9).batch(5, 8)
    moved = RandomPatches(volumes, [2], patch=9,
                          augment=AugmentConfig(flips=True, permute=True)).batch(5, 8)
    seen = set()
    for i in range(8):
        d, t = plain["data"][i], plain["label"][i]
        matches = [(f, o) for f in itertools.product((0, 1), repeat=3)
                   for o in itertools.permutations(range(3))
                   if np.array_equal(_moved(t, f, o), moved["label"][i])
                   and np.array_equal(_moved(d, f, o), moved["data"][i])]
        assert matches
        seen.add(matches[0])
    assert len(seen) > 1


def _moved(patch: np.ndarray, flips, order) -> np.ndarray:
    """A channels-last (x, y, z, C) patch flipped along the axes marked in ``flips``, then
    its axes put in ``order``."""
    patch = np.flip(patch, tuple(a for a in range(3) if flips[a]))
    return patch.transpose(*order, 3)


def test_steps_and_process_shares_stay_deterministic_with_augmentations(volumes):
    patches = RandomPatches(volumes, [2, (1, 1, 2)], patch=9, augment=ALL_ON)
    whole = patches.batch(3, 8)
    again = patches.batch(3, 8)
    shares = [patches.batch(3, 8, process=p, processes=2) for p in (0, 1)]
    for key in ("data", "label"):
        np.testing.assert_array_equal(again[key], whole[key])
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), whole[key])
    assert not np.array_equal(patches.batch(4, 8)["data"], whole["data"])


@pytest.mark.parametrize("values, named", [
    ({"augment": {"gamma": [1.5, 0.5]}}, "augment.gamma"),
    ({"augment": {"gamma": [0, 1]}}, "augment.gamma"),
    ({"augment": {"noise": [-0.01, 0.02]}}, "augment.noise"),
    ({"augment": {"noise": [0.03, 0.01]}}, "augment.noise"),
    ({"augment": {"hr_noise": [0.0, 1.5]}}, "augment.hr_noise"),
    ({"augment": {"bias_field": -0.1}}, "augment.bias_field"),
    ({"augment": {"blur_jitter": 1.0}}, "augment.blur_jitter"),
    ({"augment": {"flips": "yes"}}, "augment.flips"),
    ({"augment.noise": [0.01]}, "augment.noise"),
    ({"augment": {"permute": True}, "patch_scales": [2, [1, 1, 4]]}, "augment.permute"),
    ({"augment": {"shear": 1}}, "augment.shear"),
    ({"patch_scales": [[1, 4]]}, "patch_scales"),
    ({"validation_scale": [1, 1, -4]}, "validation_scale"),
    ({"patch_scales": [0.5]}, "patch_scales must be at least 1"),
    ({"patch_scales_by_file": {"*.nii.gz": [[1, 1, 0.9]]}}, "at least 1"),
    ({"augment": {"kspace": 1.5}}, "augment.kspace"),
    ({"augment": {"kspace_windows": ["hann"]}}, "augment.kspace_windows"),
    ({"blur": "box"}, "blur"),
])
def test_bad_settings_are_refused_naming_the_setting(values, named):
    with pytest.raises(SrrecnnError, match=named.replace(".", r"\.")):
        config_from(values)


def test_permuting_anisotropic_patches_is_refused(volumes):
    with pytest.raises(ValueError, match=r"augment\.permute"):
        RandomPatches(volumes, [(1, 1, 2)], patch=9, augment=AugmentConfig(permute=True))


def test_thin_axes_are_checked_per_axis():
    check_degradable((30, 30, 6), (1, 1, 3), "volume", "patch_scales")
    with pytest.raises(SrrecnnError, match=r"patch_scales \[1, 1, 4\]"):
        check_degradable((30, 30, 6), (1, 1, 4), "volume", "patch_scales")


def test_toml_settings_round_trip_through_the_run_config():
    """Nested scale lists, a 3-list validation scale, the blur and the augment table:
    TOML -> TrainConfig -> the JSON of train_config.json -> the same TrainConfig."""
    config = config_from(tomllib.loads(
        'patch_scales = [[1, 1, 2], [1, 1, 3], 2]\nvalidation_scale = [1, 1, 4]\n'
        'blur = "slice_profile"\n[augment]\ngamma = [0.7, 1.4]\nbias_field = 0.2\n'
        'noise = [0.01, 0.03]\nblur_jitter = 0.1\nflips = true\nhr_noise = [0, 0.02]\n'))
    assert config.patch_scales == ((1.0, 1.0, 2.0), (1.0, 1.0, 3.0), 2.0)
    assert config.validation_scale == (1.0, 1.0, 4.0)
    assert config.augment == AugmentConfig(gamma=(0.7, 1.4), bias_field=0.2, noise=(0.01, 0.03),
                                           blur_jitter=0.1, flips=True, hr_noise=(0.0, 0.02))
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["patch_scales"] == [[1, 1, 2], [1, 1, 3], 2]
    assert config_from(saved) == config


def test_plain_number_scale_lists_load_as_before():
    """An existing run's settings: [2, 3] is two isotropic scales, and no augment table
    means none."""
    config = config_from({"patch_scales": [2.0, 3.0], "validation_scale": 2.0})
    assert config.patch_scales == (2.0, 3.0) and config.validation_scale == 2.0
    assert config.augment == AugmentConfig() and config.blur == "gaussian"
    assert config.to_dict()["patch_scales"] == [2.0, 3.0]


def test_an_augment_override_wins_over_the_table():
    values = {"augment": {"noise": [0.01, 0.02], "flips": True},
              **dict([parse_override("augment.noise=[0.02, 0.03]")])}
    assert config_from(values).augment == AugmentConfig(noise=(0.02, 0.03), flips=True)
