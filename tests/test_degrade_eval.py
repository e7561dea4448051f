"""`srrecnn degrade` (observation model with consistent headers) and `srrecnn eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import crop, write

from srrecnn_jax.cli import main
from srrecnn_jax.degradation import FWHM_PER_SIGMA, degrade, slice_profile
from srrecnn_jax.evaluation import head_mask
from srrecnn_jax.images import to_array
from srrecnn_jax.metrics import psnr, ssim


@pytest.fixture
def hr_path(anatomical, tmp_path):
    """A real 2 mm T1 crop with an odd size (modcrop has work to do)."""
    return write(crop(anatomical, (4, 6, 3), (17, 15, 13)), tmp_path / "hr.nii.gz")


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_degrade_writes_the_observation_model(hr_path, tmp_path):
    """LR = zoom(gaussian_filter(HR, 1) cropped to multiples of 2, 1/2), float32."""
    assert run("degrade", hr_path, "-o", tmp_path / "lr.nii.gz", "-s", "2") == 0
    lr = to_array(sitk.ReadImage(str(tmp_path / "lr.nii.gz")))
    expected, _ = degrade(to_array(sitk.ReadImage(str(hr_path))), (2, 2, 2))
    assert lr.shape == (8, 7, 6)
    np.testing.assert_array_equal(lr, expected)


def test_degraded_images_share_the_cropped_hr_grid(hr_path, tmp_path):
    """LR corners and the interpolated image lie where the cropped HR voxels do (1e-6 mm)."""
    out = {name: tmp_path / f"{name}.nii.gz" for name in ("lr", "interp", "hrc")}
    assert run("degrade", hr_path, "-o", out["lr"], "-s", "2", "--interpolated", out["interp"],
               "--cropped-hr", out["hrc"]) == 0
    lr, interp, hrc = (sitk.ReadImage(str(p)) for p in out.values())
    assert interp.GetSize() == hrc.GetSize() == (16, 14, 12)
    assert interp.GetSpacing() == hrc.GetSpacing()
    far_lr = [n - 1 for n in lr.GetSize()]
    far_hr = [n - 1 for n in hrc.GetSize()]
    np.testing.assert_allclose(lr.TransformIndexToPhysicalPoint(far_lr),
                               hrc.TransformIndexToPhysicalPoint(far_hr), atol=1e-6)
    np.testing.assert_allclose(lr.GetOrigin(), hrc.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(to_array(interp),
                               scipy.ndimage.zoom(to_array(lr), 2, order=3), rtol=1e-6)


def test_degrade_refuses_a_negative_sigma(hr_path, tmp_path, capsys):
    assert run("degrade", hr_path, "-o", tmp_path / "lr.nii.gz", "-s", "2", "--sigma", "-1") == 1
    assert "--sigma" in capsys.readouterr().err
    assert not (tmp_path / "lr.nii.gz").exists()


def test_psnr_peak_is_the_truth_maximum_not_its_range():
    """Truth 20..100, estimate off by 1 everywhere: MSE 1, PSNR = 20 log10(100) = 40 dB
    (a peak of the range, 80, would give 38.06 dB)."""
    truth = np.linspace(20, 100, 1000).reshape(10, 10, 10)
    assert psnr(truth + 1, truth) == pytest.approx(40.0, abs=1e-9)
    assert psnr(truth + 1, truth, peak=80) == pytest.approx(20 * np.log10(80), abs=1e-9)


def test_psnr_mask_takes_the_error_over_its_voxels_only():
    """Error 1 inside the mask, 10 outside: the masked PSNR sees only the 1."""
    truth = np.full((4, 4, 4), 100.0)
    mask = np.zeros(truth.shape, bool)
    mask[:2] = True
    estimate = truth + np.where(mask, 1.0, 10.0)
    assert psnr(estimate, truth, mask=mask) == pytest.approx(40.0, abs=1e-9)


def test_ssim_of_two_constant_volumes_is_the_luminance_term():
    """No variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2."""
    a, b, span = 0.5, 1.0, 1.0
    c1 = (0.01 * span) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((12, 12, 12), a), np.full((12, 12, 12), b), data_range=span) \
        == pytest.approx(expected, rel=1e-12)


def test_ssim_window_reaches_five_voxels():
    """A sigma 1.5 Gaussian truncated at 3.5 sigma: one changed voxel lowers the SSIM
    map within 5 voxels (Chebyshev distance) of it and leaves it 1 beyond."""
    truth = scipy.ndimage.gaussian_filter(np.random.default_rng(0).random((24, 24, 24)), 2)
    estimate = truth.copy()
    estimate[12, 12, 12] += 0.5
    grid = np.indices(truth.shape)
    distance = np.abs(grid - 12).max(axis=0)
    assert ssim(estimate, truth, mask=distance > 5) == pytest.approx(1.0, abs=1e-12)
    for ring in range(6):
        assert ssim(estimate, truth, mask=distance == ring) < 1 - 1e-6


def test_ssim_is_one_for_identical_volumes_and_falls_with_noise():
    truth = scipy.ndimage.gaussian_filter(np.random.default_rng(0).random((16, 16, 16)), 2)
    noisy = truth + 0.05 * np.random.default_rng(1).standard_normal(truth.shape)
    assert ssim(truth, truth) == pytest.approx(1.0, abs=1e-12)
    assert ssim(noisy, truth) < 0.9


def test_eval_scores_the_estimate_and_the_spline_baseline(hr_path, tmp_path, capsys):
    """The spline line equals the interpolated image's own score."""
    out = {name: tmp_path / f"{name}.nii.gz" for name in ("lr", "interp")}
    run("degrade", hr_path, "-o", out["lr"], "-s", "2", "--interpolated", out["interp"])
    capsys.readouterr()
    assert run("eval", out["interp"], hr_path, "--lr", out["lr"], "--json") == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["voxels"] == 16 * 14 * 12  # HR cropped to the estimate (modcrop)
    assert scores["sr"]["psnr"] == pytest.approx(scores["spline"]["psnr"], abs=1e-4)
    assert 0 < scores["sr"]["ssim"] < 1


def test_eval_mask_and_shave_restrict_the_voxels(tmp_path, capsys):
    truth = np.random.default_rng(0).uniform(1, 2, (10, 10, 10)).astype(np.float32)
    mask = np.zeros_like(truth)
    mask[:5] = 1
    paths = [write(a, tmp_path / f"{n}.nii.gz") for n, a in
             (("sr", truth + 0.1), ("hr", truth), ("mask", mask))]
    assert run("eval", paths[0], paths[1], "--mask", paths[2], "--shave", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["voxels"] == 3 * 6 * 6


def test_eval_refuses_grids_that_do_not_match(tmp_path, capsys):
    a = write(np.ones((6, 6, 6), np.float32), tmp_path / "a.nii.gz")
    b = write(np.ones((5, 7, 6), np.float32), tmp_path / "b.nii.gz")
    assert run("eval", a, b) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "b.nii.gz" in err


def test_slice_profile_is_a_gaussian_of_fwhm_s_along_thick_axes_only():
    """1 x 1 x 4 -> sigma (0, 0, 4 / 2.3548): half the peak 2 voxels either side."""
    sigma = slice_profile((1, 1, 4))
    assert sigma[:2] == (0.0, 0.0)
    assert np.exp(-0.5 * (2 / sigma[2]) ** 2) == pytest.approx(0.5, abs=1e-12)


def test_thick_slice_degradation_leaves_the_planes_unblurred(hr_path):
    """1 x 1 x 2 on a scan whose planes are all alike: every LR plane is the HR plane
    (no in-plane blur, 1e-9 of the range); z alone is halved."""
    plane = to_array(sitk.ReadImage(str(hr_path)), np.float64)[:, :, 6]
    hr = np.repeat(plane[:, :, None], 13, axis=2)
    lr, truth = degrade(hr, (1, 1, 2), slice_profile((1, 1, 2)))
    assert lr.shape == (17, 15, 6) and truth.shape == (17, 15, 12)
    np.testing.assert_allclose(lr, truth[:, :, :6], rtol=0, atol=1e-9 * hr.max())


def test_thick_slice_degradation_blurs_along_z_by_the_slice_profile(hr_path):
    """The LR equals the spline downsampling of the HR blurred along z only, with FWHM
    2 voxels (1e-9 of the range)."""
    hr = to_array(sitk.ReadImage(str(hr_path)), np.float64)
    lr, _ = degrade(hr, (1, 1, 2), slice_profile((1, 1, 2)))
    blurred = scipy.ndimage.gaussian_filter1d(hr, 2 / FWHM_PER_SIGMA, axis=2)[:, :, :12]
    np.testing.assert_allclose(lr, scipy.ndimage.zoom(blurred, (1, 1, 0.5), order=3),
                               rtol=0, atol=1e-9 * hr.max())


def test_head_mask_fills_the_dark_inside_and_leaves_out_the_background():
    """A bright shell around a dark core on a zero background: the core is head, the
    corners are not."""
    grid = np.stack(np.meshgrid(*[np.arange(21)] * 3, indexing="ij")) - 10
    radius = np.sqrt((grid ** 2).sum(0))
    scan = np.where(radius < 9, np.where(radius < 5, 2.0, 100.0), 0.0)
    mask = head_mask(scan)
    assert mask[10, 10, 10] and not mask[0, 0, 0]
    np.testing.assert_array_equal(mask, radius < 9)
