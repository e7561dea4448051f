"""Scoring super-resolution against the truth: one ``score`` for ``srrecnn eval``, training
validation, the demo and the checkpoints' evaluation scripts.

PSNR uses the HR maximum as peak; SSIM a 3-D Gaussian window (sigma 1.5) with
the HR range as data range (``metrics``). The cubic-spline baseline is the LR
volume zoomed onto the HR grid (factors ``hr.shape / lr.shape``). Arrays are
(x, y, z).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from srrecnn_jax import model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.degradation import blur_sigma, degrade
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import read_image, to_array
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.metrics import psnr, ssim
from srrecnn_jax.scales import parse_scale


def spline_baseline(lr: np.ndarray, shape: Sequence[int], order: int = 3) -> np.ndarray:
    """The LR volume zoomed by cubic spline onto an HR grid of ``shape`` (float64)."""
    low = np.asarray(lr, np.float64)
    return zoom(low, [a / b for a, b in zip(shape, low.shape)], order)


def score(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray | None = None,
          mask: np.ndarray | None = None, shave: int = 0, with_ssim: bool = True) -> dict:
    """PSNR and SSIM of ``sr`` (and of ``lr``'s spline zoom) against ``hr``.

    Args:
      sr: the estimate, on HR's grid.
      hr: the truth.
      lr: the low-resolution input; when given, its cubic-spline zoom onto HR's
        grid is scored too, as ``"spline"``.
      mask: voxels to score (non-zero); default all.
      shave: also leave out this many voxels at every face.
      with_ssim: compute SSIM (the slower of the two).

    Returns:
      ``{"voxels": n, "peak": hr.max(), "sr": {"psnr", "ssim"}, "spline": {...}}``.
    """
    truth = np.asarray(hr, np.float64)
    if shave < 0:
        raise SrrecnnError(f"must be >= 0, got {shave}", "shave")
    region = np.ones(truth.shape, bool) if mask is None else np.asarray(mask) != 0
    if shave:
        inner = np.zeros_like(region)
        inner[shave:-shave, shave:-shave, shave:-shave] = True
        region &= inner
    if not region.any():
        raise SrrecnnError("no voxel left to evaluate (mask and shave)", "mask")
    estimates = {"sr": np.asarray(sr, np.float64)}
    if lr is not None:
        estimates["spline"] = spline_baseline(lr, truth.shape)
    peak, span = float(truth.max()), float(truth.max() - truth.min())
    scores: dict = {"voxels": int(region.sum()), "peak": peak}
    for name, estimate in estimates.items():
        scores[name] = {"psnr": psnr(estimate, truth, peak, region)}
        if with_ssim:
            scores[name]["ssim"] = ssim(estimate, truth, span, region)
    return scores


def head_mask(hr: np.ndarray, level: float = 0.1) -> np.ndarray:
    """The head in an (x, y, z) scan: voxels above ``level`` times the maximum, with the
    holes inside filled (ventricles, dark CSF), as a bool array. Background and the
    air around the head, where any method scores well, are left out."""
    truth = np.asarray(hr, np.float64)
    return scipy.ndimage.binary_fill_holes(truth > level * truth.max())


def validate(params: model.Params, config: ModelConfig, scale: float | Sequence[float],
             volumes: Sequence[np.ndarray],
             blur: str = "gaussian") -> dict[str, dict[str, float]]:
    """Mean scores of the model and of cubic spline on held-out HR volumes.

    Each (x, y, z) HR volume is degraded by the observation model at ``scale`` (a
    number, or (x, y, z) factors) with ``blur`` (``degradation.blur_sigma``: the
    original's Gaussian, or thick slices) and restored both ways. Returns
    ``{"sr": {"psnr", "ssim"}, "spline": {"psnr", "ssim"}}``.
    """
    axes = parse_scale(scale)
    rows = []
    for hr in volumes:
        lr, truth = degrade(hr, axes, blur_sigma(axes, blur))
        factors = [a / b for a, b in zip(truth.shape, lr.shape)]
        rows.append(score(super_resolve_array(params, config, lr, factors), truth, lr))
    return {name: {metric: float(np.mean([r[name][metric] for r in rows]))
                   for metric in ("psnr", "ssim")}
            for name in ("sr", "spline")}


def _matching_truth(sr: sitk.Image, hr: sitk.Image, name: str) -> np.ndarray:
    """HR voxels on SR's grid: equal grids, or HR cropped at the far end (modcrop)."""
    truth = to_array(hr, np.float64)
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
    """``score`` of image files: ``sr_path`` (and LR's spline zoom) against ``hr_path``."""
    if shave < 0:
        raise SrrecnnError(f"must be >= 0, got {shave}", "shave")
    sr_image = read_image(sr_path, "estimate")
    truth = _matching_truth(sr_image, read_image(hr_path, "HR image"), str(hr_path))
    low = to_array(read_image(lr, "LR image"), np.float64) if lr is not None else None
    region = None
    if mask is not None:
        mask_image = read_image(mask, "mask")
        if mask_image.GetSize() != sr_image.GetSize():
            raise SrrecnnError(f"{mask}: size {mask_image.GetSize()} is not the estimate's "
                               f"{sr_image.GetSize()}")
        region = to_array(mask_image) != 0
    return score(to_array(sr_image, np.float64), truth, low, region, shave)
