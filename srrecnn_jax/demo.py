"""``srrecnn demo``: degrade a brain no shipped model saw by 2, restore it, score it, show it.

The scan is Colin27 (Debian's ``mricron-data``, one real person) when installed, else
the slab of the MNI T1 that every shipped model held out of its training (world z
28-68 mm: ``checkpoints/scripts/split_templates.py``): a
demo never scores a model on what it was trained on. The model is the shipped
``default`` (``catalog.DEFAULT``) unless one is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax import catalog, sources
from srrecnn_jax.degradation import degrade_image
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.evaluation import head_mask, score, spline_baseline
from srrecnn_jax.images import read_image, to_array, to_image
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.plots import draw_montage, draw_planes
from srrecnn_jax.writing import write_image_atomic

#: z index range of the MNI T1 that no shipped model trained on (split_templates.py).
MNI_HELD_OUT = (100, 140)
#: Colin27 (``sources.COLIN27``; a test points it elsewhere).
COLIN27 = sources.COLIN27
CROP_SHAVE = 6  # HR voxels left out at each face of a crop when scoring
#: Where the shipped models are (``catalog.CHECKPOINTS``; a test points it elsewhere).
SHIPPED_ROOT = catalog.CHECKPOINTS
#: The original release's monomodal x2 weights, where the source tree has them beside it.
ORIGINAL = sources.release_weights(1)


def mni_t1() -> sitk.Image:
    """nilearn's 1 mm MNI ICBM152 2009a T1 (the ``data`` extra)."""
    return read_image(sources.mni_2009a_t1(), "MNI T1")


def unseen_scan() -> tuple[sitk.Image, str]:
    """The demo's HR scan and what it is: Colin27 when installed, else the MNI slab held
    out of the shipped checkpoint's training."""
    if COLIN27.is_file():
        return (read_image(COLIN27, "Colin27"),
                f"Colin27 ({COLIN27}), a real brain no shipped model was trained on")
    low, high = MNI_HELD_OUT
    return (mni_t1()[:, :, low:high],
            f"MNI T1 z {low}-{high - 1}, held out of every shipped model's training "
            "(apt-get install mricron-data to score Colin27, a real brain, instead)")


def default_model() -> Path:
    """The shipped ``default`` model's folder."""
    try:
        return catalog.locate("default", SHIPPED_ROOT)
    except SrrecnnError:
        raise SrrecnnError(f"no shipped default model in {SHIPPED_ROOT} (an installation "
                           "without its package data); reinstall srrecnn-jax or give a model",
                           "model") from None


def run_demo(out_dir: Path, model: Path | None = None, crop: int | None = None,
             tile: int | None = None) -> dict:
    """Write lr/spline/sr/hr volumes and ``montage.png`` to ``out_dir``; return the scores.

    Args:
      out_dir: created if needed.
      model: defaults to the shipped ``default`` model.
      crop: use only a centred crop of this many HR voxels per axis (quick runs);
        scores then leave out ``CROP_SHAVE`` voxels at each face.
      tile: passed to the network (see ``srrecnn sr --tile``).

    The original release's x2 weights are scored too where ``ORIGINAL`` exists.

    Returns:
      ``{"data": what was scored, "psnr_spline", "psnr_sr", "psnr_spline_head",
      "psnr_sr_head", "ssim_spline", "ssim_sr"}``, and ``"psnr_original"`` /
      ``"ssim_original"`` with the original weights.
    """
    model = model or default_model()
    resolver = SuperResolver.load(model)
    if resolver.config.in_channels != 1:
        raise SrrecnnError(f"{model}: a multimodal model; the demo scores monomodal ones (no "
                           "second modality of its brain is installable)", "model")
    hr, data = unseen_scan()
    if crop:
        size = [min(crop, n) for n in hr.GetSize()]
        start = [(n - c) // 2 for n, c in zip(hr.GetSize(), size)]
        hr = hr[tuple(slice(a, a + c) for a, c in zip(start, size))]
    images = degrade_image(hr, (2.0, 2.0, 2.0))
    sr = resolver.run(images["lr"], 2, tile=tile)
    truth = to_array(images["hr"], np.float64)
    lr = to_array(images["lr"])
    estimate = to_array(sr, np.float64)
    # A crop cuts through the head: the zoom's zero padding rings at its faces, so
    # score the interior only. The whole volume has background at its faces.
    shave = CROP_SHAVE if crop else 0
    # The spline zoom once (score(..., lr) would zoom again for each call: 4 s a time
    # on the whole volume), scored as an estimate like the network's.
    spline = spline_baseline(lr, truth.shape)
    inside = head_mask(truth)
    whole = {name: score(volume, truth, shave=shave)["sr"]
             for name, volume in (("sr", estimate), ("spline", spline))}
    head = {name: score(volume, truth, mask=inside, shave=shave, with_ssim=False)["sr"]
            for name, volume in (("sr", estimate), ("spline", spline))}
    scores = {"data": data,
              "psnr_spline": whole["spline"]["psnr"], "psnr_sr": whole["sr"]["psnr"],
              "psnr_spline_head": head["spline"]["psnr"], "psnr_sr_head": head["sr"]["psnr"],
              "ssim_spline": whole["spline"]["ssim"], "ssim_sr": whole["sr"]["ssim"]}
    if ORIGINAL.is_file():
        theirs = to_array(SuperResolver.load(ORIGINAL).run(images["lr"], 2, tile=tile),
                             np.float64)
        scored = score(theirs, truth, shave=shave)["sr"]
        scores |= {"psnr_original": scored["psnr"], "ssim_original": scored["ssim"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    geometry = (images["hr"].GetSpacing(), images["hr"].GetOrigin(), images["hr"].GetDirection())
    for name, image in {"lr": images["lr"], "hr": images["hr"], "sr": sr,
                        "spline": to_image(spline, *geometry)}.items():
        write_image_atomic(image, out_dir / f"{name}.nii.gz")
    draw_montage(spline, estimate, truth, out_dir / "montage.png", scores)
    real = real_scan_montage(resolver, out_dir / "real_2mm.png", tile)
    if real:
        scores["real"] = real
    return scores


def real_scan_montage(resolver: SuperResolver, png: Path, tile: int | None = None
                      ) -> str | None:
    """A real low-resolution scan (nibabel's 2 mm T1, no truth) zoomed x2 by cubic spline
    beside the model (and the 2019 weights where present), drawn to ``png``: how SR looks
    on a scan no simulation made. Returns what it shows, or None without nibabel."""
    try:
        path = sources.anatomical_2mm()
    except SrrecnnError:
        return None
    image = read_image(path, "nibabel's 2 mm T1")
    sr = to_array(resolver.run(image, 2, tile=tile))
    columns = [("cubic spline x2", spline_baseline(to_array(image), sr.shape)),
               ("SR x2", sr)]
    if ORIGINAL.is_file():
        theirs = SuperResolver.load(ORIGINAL).run(image, 2, tile=tile)
        columns.append(("2019 weights x2", to_array(theirs)))
    draw_planes(columns, png, title="a real 2 mm T1 (nibabel's anatomical.nii), no truth")
    return f"nibabel's real 2 mm T1 ({path}) at x2: spline beside SR"

