"""Held-out evaluation of the shipped checkpoint: spline, original weights, ours.

    python checkpoints/scripts/evaluate_mni_x2.py HELDOUT.nii.gz [--json OUT]

The held-out slab (``heldout.nii.gz`` of ``split_templates.py``) is degraded x2
by the observation model and restored by cubic spline, by the original release's
monomodal weights (when ../shared/caffe is present) and by checkpoints/mni_x2/model;
PSNR peak = HR maximum, SSIM with a Gaussian window (sigma 1.5). These are the same
numbers `srrecnn train --validate` logs as val_psnr / val_spline_psnr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from srrecnn_jax import sources
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.evaluation import validate
from srrecnn_jax.images import read_image, to_array

#: The shipped model this script scores: ``checkpoints/mni_x2/``.
FOLDER = Path(__file__).resolve().parents[1] / "mni_x2"
ORIGINAL = sources.release_weights(1)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heldout", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    slab = [to_array(read_image(args.heldout))]
    rows = {}
    models = {"ours (checkpoints/mni_x2/model)": FOLDER / "model"}
    if ORIGINAL.exists():
        models["original weights (10L-64, converted)"] = ORIGINAL
    for name, path in models.items():
        loaded = load_model(path)
        scores = validate(loaded.params, loaded.config, 2.0, slab)
        rows["cubic spline"] = scores["spline"]
        rows[name] = scores["sr"]
    for name, s in rows.items():
        print(f"| {name} | {s['psnr']:.2f} dB | {s['ssim']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
