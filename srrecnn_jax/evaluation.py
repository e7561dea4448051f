"""``srrecnn eval``: score a result against the truth, optionally with the spline baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax import io
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.metrics import psnr, ssim


def _matching_truth(sr: sitk.Image, hr: sitk.Image, name: str) -> np.ndarray:
    """HR voxels on SR's grid: equal grids, or HR cropped at the far end (modcrop)."""
    truth = io.to_array(hr, np.float64)
    if sr.GetSize() == hr.GetSize():
        return truth
    same_start = (np.allclose(sr.GetOrigin(), hr.GetOrigin(), atol=1e-3)
                  and np.allclose(sr.GetSpacing(), hr.GetSpacing(), rtol=1e-4)
                  and np.allclose(sr.GetDirection(), hr.GetDirection(), atol=1e-4))
    if same_start and all(a <= b for a, b in zip(sr.GetSize(), hr.GetSize())):
        return truth[tuple(slice(0, n) for n in sr.GetSize())]
    raise SrrecnnError(f"{name}: size {hr.GetSize()} does not match the estimate's "
                       f"{sr.GetSize()} (nor contains it from the same first voxel)")


def evaluate_files(sr_path: Path, hr_path: Path, mask: Path | None = None, shave: int = 0,
                   lr: Path | None = None) -> dict:
    """PSNR (peak = HR max) and SSIM of ``sr_path`` (and of LR's spline zoom) against HR."""
    if shave < 0:
        raise SrrecnnError(f"--shave: must be >= 0, got {shave}")
    sr_image = io.read_image(sr_path, "estimate")
    truth = _matching_truth(sr_image, io.read_image(hr_path, "HR image"), str(hr_path))
    estimates = {"sr": io.to_array(sr_image, np.float64)}
    if lr is not None:
        low = io.to_array(io.read_image(lr, "LR image"), np.float64)
        factors = [a / b for a, b in zip(truth.shape, low.shape)]
        estimates["spline"] = zoom(low, factors)
    region = np.ones(truth.shape, bool)
    if mask is not None:
        mask_image = io.read_image(mask, "mask")
        if mask_image.GetSize() != sr_image.GetSize():
            raise SrrecnnError(f"{mask}: size {mask_image.GetSize()} is not the estimate's "
                               f"{sr_image.GetSize()}")
        region &= io.to_array(mask_image) != 0
    if shave:
        inner = np.zeros_like(region)
        inner[shave:-shave, shave:-shave, shave:-shave] = True
        region &= inner
    if not region.any():
        raise SrrecnnError("--mask/--shave: no voxel left to evaluate")
    peak, span = float(truth.max()), float(truth.max() - truth.min())
    scores: dict = {"voxels": int(region.sum()), "peak": peak}
    for name, estimate in estimates.items():
        scores[name] = {"psnr": psnr(estimate, truth, peak, region),
                        "ssim": ssim(estimate, truth, span, region)}
    return scores
