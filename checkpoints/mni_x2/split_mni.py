"""Split nilearn's 1 mm MNI T1 into training slabs and a held-out slab (z index ranges).

    python checkpoints/mni_x2/split_mni.py OUT_DIR

writes OUT_DIR/train_inferior.nii.gz (z 0-99), OUT_DIR/train_superior.nii.gz
(z 140-188) and OUT_DIR/heldout.nii.gz (z 100-139). A 0-voxel gap is enough:
the held-out voxels never enter a training patch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import SimpleITK as sitk

from srrecnn_jax.demo import MNI_HELD_OUT as HELD_OUT  # z range, MNI voxel indices
from srrecnn_jax.demo import mni_t1

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    t1 = mni_t1()
    sitk.WriteImage(t1[:, :, :HELD_OUT[0]], str(out / "train_inferior.nii.gz"))
    sitk.WriteImage(t1[:, :, HELD_OUT[1]:], str(out / "train_superior.nii.gz"))
    sitk.WriteImage(t1[:, :, HELD_OUT[0]:HELD_OUT[1]], str(out / "heldout.nii.gz"))
