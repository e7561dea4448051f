"""Training slabs and held-out slabs of the real scans with a truth.

    python checkpoints/scripts/split_real.py OUT_DIR

For each scan of ``sources.REAL_HELD_OUT`` (``shared/data/real/``: a contrast-enhanced
T1 at 1 mm, a stroke patient's T2 at 1 mm, a T1 head at 1.6 mm) writes
``OUT_DIR/{name}_inferior.nii.gz`` and ``{name}_superior.nii.gz`` (the z indices below
and above its held-out slab: training data) and ``{name}_heldout.nii.gz`` (the slab:
evaluation only), as float32 with the scan's geometry. The slabs were fixed in
``sources.py`` before any model trained on these scans.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk

from srrecnn_jax import sources
from srrecnn_jax.writing import write_image_atomic


def split(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (first, last) in sources.REAL_HELD_OUT.items():
        image = sitk.ReadImage(str(sources.real_scan(name)), sitk.sitkFloat32)
        parts = {"inferior": image[:, :, :first], "superior": image[:, :, last:],
                 "heldout": image[:, :, first:last]}
        for part, slab in parts.items():
            write_image_atomic(slab, str(out / f"{name}_{part}.nii.gz"))
        print(f"{name}: held out z {first}-{last - 1} of {image.GetSize()[2]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the slabs")
    split(parser.parse_args().out)
