"""The real thick-slice scans without truth (``sources.REAL_THICK``: a clinical axial T2 of
0.75 x 0.75 x 5.5 mm, a PD of 0.86 x 0.86 x 2.4 mm) made isotropic at their in-plane
spacing (``srrecnn sr --isotropic``): cubic spline beside the model and the model
fine-tuned on the scan first (``--adapt``), three central planes (the sagittal and
coronal ones cut through the slices), one grey scale.

    python checkpoints/scripts/montage_thick.py docs/img [--adapt 600] [--crop 128] \\
        [--json checkpoints/scores/thick_real.json]

Each scan is cut to its central ``--crop`` x ``--crop`` in-plane voxels (all slices;
the header keeps the cut's position) so that a 2-core CPU runs the 10-layer network in
minutes; the figures are ``thick_<name>.png``, the adaptation's numbers (held-out
PSNRs, steps, seconds, kept) go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from srrecnn_jax import catalog, sources
from srrecnn_jax.adapt import AdaptSettings, adapt, slice_fwhm
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.evaluation import spline_baseline
from srrecnn_jax.images import read_image, to_array
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.plots import draw_planes
from srrecnn_jax.scales import isotropic_factors


def central_cut(image, size: int):
    """The central ``size`` x ``size`` voxels of each in-plane axis (the two finer ones),
    every slice; a SimpleITK slice keeps the physical position."""
    spacing = image.GetSpacing()
    thick = int(np.argmax(spacing))
    index = []
    for axis, n in enumerate(image.GetSize()):
        start = 0 if axis == thick or n <= size else (n - size) // 2
        stop = n if axis == thick or n <= size else start + size
        index.append(slice(start, stop))
    return image[index[0], index[1], index[2]]


def montage(name: str, model_name: str, budget: float, crop: int, folder: Path) -> dict:
    """One scan's figure; returns its numbers."""
    image = central_cut(read_image(sources.real_scan(name), name), crop)
    factors = isotropic_factors(image.GetSize(), image.GetSpacing())
    loaded = load_model(catalog.locate(model_name))
    start = time.perf_counter()
    plain = to_array(SuperResolver(loaded).run(image, factors, log=lambda _: None))
    plain_seconds = time.perf_counter() - start
    lr = to_array(image)
    result = adapt(loaded, lr, factors, slice_fwhm(image.GetSpacing(), factors),
                   AdaptSettings(seconds=budget))
    adapted = to_array(SuperResolver(result.adapted).run(image, factors,
                                                          log=lambda _: None))
    spline = spline_baseline(lr, plain.shape)
    verdict = "kept" if result.kept else "not kept"
    draw_planes([("cubic spline", spline), (model_name, plain),
                 (f"adapted {budget:g} s ({verdict})", adapted)],
                folder / f"thick_{name}.png",
                title=f"{name}: {'x'.join(f'{s:.3g}' for s in image.GetSpacing())} mm to "
                f"isotropic (factors {', '.join(f'{f:.3g}' for f in factors)}), no truth")
    return {"scan": name, "size": list(image.GetSize()),
            "spacing": list(image.GetSpacing()), "factors": list(factors),
            "model": model_name, "model_seconds": round(plain_seconds, 1),
            "adapt": result.facts()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the figures go")
    parser.add_argument("--model", default="thick-slice")
    parser.add_argument("--adapt", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--scans", nargs="+", default=list(sources.REAL_THICK))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    found = []
    for name in args.scans:
        found.append(montage(name, args.model, args.adapt, args.crop, args.folder))
        print(json.dumps(found[-1]), flush=True)
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.is_file() else []
        kept = [r for r in old if r["scan"] not in args.scans]
        args.json.write_text(json.dumps(kept + found, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
