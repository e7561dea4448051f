"""Every shipped model, cubic spline and the original weights on Colin27: a real brain
that no model here was trained or selected on.

    python checkpoints/scripts/evaluate.py [--regions crop head] \\
        [--json checkpoints/scores/colin27_crop.json]
    python checkpoints/scripts/evaluate.py --hr T1.nii.gz --reference T2.nii.gz ...

Colin27 (``ch2.nii.gz``, one person scanned 27 times and averaged, 1 mm, from
Debian's ``mricron-data``: ``apt-get install mricron-data``) is degraded by:

- isotropic x2, x2.5, x3: the original training data's observation model
  (Gaussian blur sigma = 1 voxel, modcrop, cubic-spline downsampling);
- thick slices 1 x 1 x s, s = 2..5: a Gaussian slice profile with FWHM = s voxels
  along z only, modcrop, downsampling along z.

or, with ``--psf kspace``, as a scanner acquires a coarser image: the central 1 / s of
k-space along each coarser axis, magnitude, then the same crop and sampling
(``degradation.observe``; rows ``x2 k-space``); and, with ``--noise P``, Rician noise of
sigma P % of the HR maximum (of the region scored, the PSNR peak: Colin27's crop 190,
its whole head 254) added to the LR image (seeded: the same noisy image for every
method; a scan's own noise, which the degradation above leaves out), and restored by
cubic spline, by the original release's monomodal x2 weights (when ``../shared/caffe``
is present) and by every monomodal ``checkpoints/*/model``, each run at the
degradation's scale through ``super_resolve_array`` (as ``srrecnn sr``).

With ``--reference`` (an HR image of another modality on the grid of ``--hr``, e.g.
the held-out slab of the ICBM 2009c T1/T2 pair: no real T1/T2 pair is installable),
the methods are the multimodal ones instead: the original release's multimodal x2
weights and every two-channel ``checkpoints/*/model``, given the reference cropped as
the HR image is. Regions:

- ``crop``: the central 96 x 112 x 96 voxels, degraded on their own, scored with a
  4-voxel border shaved;
- ``head``: the whole volume degraded, scored over the whole volume and inside
  the head (``evaluation.head_mask``), a 4-voxel border shaved from both.

PSNR uses the HR maximum as peak; SSIM a Gaussian window (sigma 1.5). The whole
head with the 10-layer original weights takes minutes per condition on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from srrecnn_jax import guardrails
from srrecnn_jax.checkpoint import load_model, read_meta
from srrecnn_jax.degradation import PSFS, observe, rician_noise, slice_profile
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.evaluation import head_mask, score
from srrecnn_jax.images import read_image, to_array
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.sources import COLIN27, release_weights

#: The shelf of shipped models: ``checkpoints/``, the folder above this script's.
SHELF = Path(__file__).resolve().parents[1]
#: input channels -> (method name, the original release's weights)
ORIGINALS = {1: ("original 10L-64 x2", release_weights(1)),
             2: ("original multimodal 10L-64 x2", release_weights(2))}
CROP = (96, 112, 96)
SHAVE = 4
#: name -> (scale (x, y, z), blur sigma per axis)
CONDITIONS = {"x2": ((2, 2, 2), 1.0), "x2.5": ((2.5, 2.5, 2.5), 1.0), "x3": ((3, 3, 3), 1.0)}
CONDITIONS |= {f"1x1x{s}": ((1, 1, s), slice_profile((1, 1, s))) for s in (2, 3, 4, 5)}


def shipped_models(channels: int = 1) -> dict[str, Path]:
    """Methods besides spline with ``channels`` inputs (1: T1 alone; 2: T1 and a
    reference): the original weights when present, every shipped model."""
    name, original = ORIGINALS[channels]
    models = {name: original} if original.is_file() else {}
    for folder in sorted(SHELF.glob("*/model")):
        _, config = read_meta(folder / "config.json")  # the config alone, not the weights
        if config.in_channels == channels:
            models[folder.parent.name] = folder
    return models


def central_crop(volume: np.ndarray, size=CROP) -> np.ndarray:
    """The central ``size`` voxels (all of an axis shorter than that)."""
    return guardrails.central_crop(volume, size)


def condition_name(condition: str, noise: float = 0.0, psf: str = "gaussian") -> str:
    """The row label of ``condition`` with ``noise`` % Rician noise and the acquisition's
    point spread: ``x2``, ``x2 + 1% noise``, ``x2 k-space + 1% noise`` (the release's
    Gaussian model is unnamed, as in every earlier table)."""
    name = condition if psf == "gaussian" else f"{condition} k-space"
    return f"{name} + {noise:g}% noise" if noise else name


def noisy(lr: np.ndarray, noise: float, peak: float) -> np.ndarray:
    """``lr`` with Rician noise of sigma ``noise`` % of ``peak``, from a generator seeded
    with 0: every method of a run, and every run, gets the same noisy image."""
    return rician_noise(lr, noise / 100 * peak, np.random.default_rng(0)) if noise else lr


def evaluate(hr: np.ndarray, condition: str, models: dict, region: str,
             reference: np.ndarray | None = None, noise: float = 0.0,
             psf: str = "gaussian") -> list[dict]:
    """Rows ``{condition, region, method, psnr, ssim}`` for one degradation of ``hr``
    (``psf``: the release's Gaussian model, or ``kspace``, a scanner's acquisition of the
    central 1 / s of k-space along each coarser axis, magnitude, ``degradation.observe``;
    ``noise``: Rician, % of the HR maximum, on the LR image); ``reference`` (the grid of
    ``hr``) goes to every model, cropped as ``hr`` is."""
    scale, sigma = CONDITIONS[condition]
    lr, truth = observe(hr, scale, psf=psf, sigma=sigma)
    lr = noisy(lr, noise, float(hr.max()))
    condition = condition_name(condition, noise, psf)
    if reference is not None:
        reference = reference[tuple(slice(0, n) for n in truth.shape)]
    factors = [a / b for a, b in zip(truth.shape, lr.shape)]
    masks = {"crop": None} if region == "crop" else {"head": None,
                                                      "head (mask)": head_mask(truth)}
    rows = []
    for i, (method, loaded) in enumerate(models.items()):
        start = time.perf_counter()
        sr = super_resolve_array(loaded.params, loaded.config, lr, factors, reference)
        seconds = round(time.perf_counter() - start, 1)
        for name, mask in masks.items():
            scores = score(sr, truth, lr if i == 0 else None, mask, SHAVE)
            if i == 0:  # the spline baseline once, beside the first method
                rows.append({"condition": condition, "region": name,
                             "method": "cubic spline", **scores["spline"]})
            rows.append({"condition": condition, "region": name, "method": method,
                         **scores["sr"], "seconds": seconds})
    return rows


def table(rows: list[dict], region: str) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows if r["region"] == region))
    conditions = list(dict.fromkeys(r["condition"] for r in rows if r["region"] == region))
    lines = [f"| {region} | " + " | ".join(conditions) + " |",
             "|---" * (len(conditions) + 1) + "|"]
    for method in methods:
        cells = []
        for condition in conditions:
            found = [r for r in rows if (r["region"], r["method"], r["condition"])
                     == (region, method, condition)]
            cells.append(f"{found[0]['psnr']:.2f} dB / {found[0]['ssim']:.4f}" if found
                         else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hr", type=Path, default=COLIN27,
                        help="the HR scan (default: Colin27 from mricron-data)")
    parser.add_argument("--regions", nargs="+", choices=("crop", "head"),
                        default=["crop", "head"])
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS),
                        default=list(CONDITIONS))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0], metavar="PCT",
                        help="Rician noise on the LR image, sigma in %% of the HR maximum of "
                             "the region (the PSNR peak); "
                             "each condition once per value (default: 0, none)")
    parser.add_argument("--psf", nargs="+", choices=PSFS, default=["gaussian"],
                        help="how the LR image is acquired, each its own condition: gaussian "
                        "(the release's model, default), kspace (a scanner's: the central 1/s "
                        "of k-space per coarser axis, magnitude)")
    parser.add_argument("--reference", type=Path,
                        help="HR image of another modality on the grid of --hr: score the "
                             "multimodal methods, given it, instead of the monomodal ones")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="only these methods besides spline (folder names here, or "
                             "the original weights' name); default: all")
    parser.add_argument("--extra", type=Path, action="append", default=[], metavar="MODEL",
                        help="also score this model folder, training run or .caffemodel, "
                             "named by its path (repeatable)")
    parser.add_argument("--json", type=Path,
                        help="write the rows here; rows of a method, condition and region "
                             "not run this time are kept from the file")
    args = parser.parse_args(argv)
    if not args.hr.is_file():
        print(f"evaluate.py: {args.hr}: not found (apt-get install mricron-data)",
              file=sys.stderr)
        return 1
    if not all(0 <= p < 100 for p in args.noise):
        print(f"evaluate.py: --noise: {args.noise}: each must be in [0, 100)", file=sys.stderr)
        return 2
    for path in [args.reference, *args.extra]:
        if path is not None and not path.exists():
            print(f"evaluate.py: {path}: not found", file=sys.stderr)
            return 1
    try:
        hr = to_array(read_image(args.hr), np.float64)
        reference = (None if args.reference is None
                     else to_array(read_image(args.reference), np.float64))
    except SrrecnnError as e:
        print(f"evaluate.py: {e}", file=sys.stderr)
        return 1
    if reference is not None and reference.shape != hr.shape:
        print(f"evaluate.py: {args.reference}: {reference.shape} voxels, --hr has "
              f"{hr.shape}: not on the same grid", file=sys.stderr)
        return 1
    available = shipped_models(1 if reference is None else 2)
    unknown = sorted(set(args.models or ()) - set(available))
    if unknown:
        print(f"evaluate.py: --models: no such method: {', '.join(unknown)} (have: "
              f"{', '.join(available)})", file=sys.stderr)
        return 2
    models = {name: load_model(path) for name, path in available.items()
              if not args.models or name in args.models}
    models |= {str(path): load_model(path) for path in args.extra}
    rows = []
    for region in args.regions:
        cut = central_crop if region == "crop" else np.asarray
        volume, other = cut(hr), None if reference is None else cut(reference)
        for psf, condition, noise in itertools.product(args.psf, args.conditions, args.noise):
            new = evaluate(volume, condition, models, region, other, noise, psf)
            scores = ", ".join(f"{r['region']} {r['method']} {r['psnr']:.2f} dB" for r in new)
            print(f"{condition_name(condition, noise, psf)}: {scores}", file=sys.stderr,
                  flush=True)
            rows += new
    if args.json:
        rows = merged(args.json, rows, _key)
    for region in dict.fromkeys(r["region"] for r in rows):
        print(table(rows, region) + "\n")
    if args.json:
        write_json(args.json, {"hr": str(args.hr), "rows": rows})
    return 0


def merged(path: Path, rows: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """The rows of the JSON file ``path`` (if any), each replaced by the row of ``rows``
    of the same ``key``, then the rest of ``rows``: a run that scores a few cells keeps
    the others."""
    new = {key(r): r for r in rows}
    old = json.loads(path.read_text(encoding="utf-8"))["rows"] if path.is_file() else []
    kept = [new.pop(key(r), r) for r in old]
    return kept + list(new.values())


def write_json(path: Path, content: dict) -> None:
    """``content`` to ``path`` through a temporary name: the file holds rows earlier runs
    scored, which a crash mid-write must not lose."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def _key(row: dict) -> tuple[str, str, str]:
    return row["method"], row["condition"], row["region"]


if __name__ == "__main__":
    sys.exit(main())
