"""Thick slices with and without fine-tuning on the scan (``srrecnn sr --adapt``), scored
on Colin27 and on the held-out slab of every real scan with a truth, in one run.

    python checkpoints/scripts/split_real.py data/real        # the held-out slabs
    python checkpoints/scripts/evaluate_thick.py --real data/real \\
        [--scans "Colin27 crop" ...] [--factors 2 3 4 5 4.4] [--axes z y] \\
        [--adapt 600] [--json checkpoints/scores/thick_slices.json]

Each scan is cut along the thick axis to a length that the factor s divides exactly
(88 voxels at 4.4), acquired with thick slices along z or y (``degradation.observe``: a
Gaussian slice profile of FWHM s voxels, crop, spline sampling; the header spacing is
s times the HR's along that axis) and restored as ``srrecnn sr`` does (``SuperResolver``,
the thick axis swapped into the model's slice axis) by cubic spline, by the model
(``--model``, default the shipped ``thick-slice``) and, with ``--adapt SECONDS``, by the
model fine-tuned on the thick scan alone first (``adapt.adapt`` with the slice profile
the header gives: FWHM = slice spacing; the held-out check decides which weights run).
PSNR peak = HR maximum, 4 voxels shaved at every face, SSIM window sigma 1.5; the whole
head is scored inside ``evaluation.head_mask``.

Scans: Colin27 (evaluation only: no model here was trained or selected on it), its
central 96 x 112 x 96 crop (``Colin27 crop``) and the whole head (``Colin27 head``); the
held-out z slab of each real scan (``<name>_heldout.nii.gz`` of ``split_real.py``). The
summary checks the targets of fine-tuning: at 1x1x4 >= spline + 2.5 dB and >= the model
+ 0.5 dB, at 1x1x4.4 >= spline + 2 dB, wall time <= budget + 10%. Adapting runs the
2-core CPU for the whole budget: time nothing beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import SHAVE, central_crop, merged, write_json  # noqa: E402
from evaluate_real import cell_key, suffixed  # noqa: E402

from srrecnn_jax.adapt import AdaptSettings, adapt, slice_fwhm  # noqa: E402
from srrecnn_jax.checkpoint import load_model  # noqa: E402
from srrecnn_jax.config import ACQUISITIONS  # noqa: E402
from srrecnn_jax.degradation import observe, slice_profile  # noqa: E402
from srrecnn_jax.evaluation import head_mask, score, spline_baseline  # noqa: E402
from srrecnn_jax.images import read_image, to_array, to_image  # noqa: E402
from srrecnn_jax.inference import SuperResolver  # noqa: E402
from srrecnn_jax.sources import COLIN27, REAL_HELD_OUT  # noqa: E402

SHELF = Path(__file__).resolve().parents[1]
FACTORS = (2.0, 3.0, 4.0, 5.0, 4.4)
AXES = {"z": 2, "y": 1}
#: factor -> (least gain over spline, least gain over the model) of the adapted model.
TARGETS = {4.0: (2.5, 0.5), 4.4: (2.0, None)}
#: Scans whose rows the targets are checked on.
TARGET_SCANS = ("Colin27 crop", "Colin27 head")


def scans(colin: Path, real: Path | None) -> dict[str, tuple[np.ndarray, bool]]:
    """Scan name -> (HR volume, score inside the head mask)."""
    hr = to_array(read_image(colin), np.float64)
    found = {"Colin27 crop": (central_crop(hr), False), "Colin27 head": (hr, True)}
    for name in REAL_HELD_OUT if real else ():
        found[name] = (to_array(read_image(real / f"{name}_heldout.nii.gz"), np.float64),
                       False)
    return found


def exact_length(n: int, factor: float) -> int:
    """The longest length <= n that ``factor`` divides into a whole number of slices."""
    for slices in range(int(n // factor), 0, -1):
        if math.isclose(slices * factor, round(slices * factor), abs_tol=1e-9):
            return int(round(slices * factor))
    raise ValueError(f"{n} voxels hold no whole slice of {factor}")


def acquire(hr: np.ndarray, factor: float, axis: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``(lr, truth, scale)``: ``hr`` cut to ``exact_length`` along ``axis``, with thick
    slices of ``factor`` along it (Gaussian slice profile)."""
    keep = [slice(None)] * 3
    keep[axis] = slice(0, exact_length(hr.shape[axis], factor))
    hr = hr[tuple(keep)]
    scale = [1.0, 1.0, 1.0]
    scale[axis] = factor
    lr, truth = observe(hr, scale, sigma=slice_profile(scale))
    return lr, truth, [a / b for a, b in zip(truth.shape, lr.shape)]


def restore(loaded, lr: np.ndarray, factors: list, acquisition: str = "none"
            ) -> tuple[np.ndarray, float]:
    """The model's output for ``lr`` as ``srrecnn sr`` computes it (with
    ``--acquisition``), and its seconds."""
    spacing = [1.0 * f for f in factors]  # HR 1 mm: the slice spacing is the factor
    image = to_image(lr, spacing, (0, 0, 0), np.eye(3).ravel())
    start = time.perf_counter()
    out = SuperResolver(loaded).run(image, factors, log=lambda _: None,
                                    acquisition=acquisition)
    return to_array(out), time.perf_counter() - start


def score_cell(hr: np.ndarray, masked: bool, factor: float, axis: str, loaded,
               name: str, budget: float | None, acquisitions: tuple = ("none",)
               ) -> list[dict]:
    """Rows for one scan and condition: spline, the model and (``budget``) adapted, each
    model row once per acquisition of ``acquisitions`` (``sr --acquisition``)."""
    lr, truth, factors = acquire(hr, factor, AXES[axis])
    mask = head_mask(truth) if masked else None
    base = {"condition": f"{factor:g} along {axis}", "factor": factor, "axis": axis}
    rows = [{**base, "method": "cubic spline",
             **score(spline_baseline(lr, truth.shape), truth, None, mask, SHAVE)["sr"]}]
    for acquisition in acquisitions:
        sr, seconds = restore(loaded, lr, factors, acquisition)
        rows.append({**base, "method": suffixed(name, acquisition),
                     **score(sr, truth, None, mask, SHAVE)["sr"], "seconds": round(seconds, 1)})
    if budget is not None:
        spacing = [1.0 * f for f in factors]
        fwhm = slice_fwhm(spacing, factors)
        result = adapt(loaded, lr.astype(np.float32), factors, fwhm,
                       AdaptSettings(seconds=budget))
        for acquisition in acquisitions:
            sr, seconds = restore(result.model, lr, factors, acquisition)
            rows.append({**base, "method": suffixed(f"{name} + adapt {budget:g} s", acquisition),
                         **score(sr, truth, None, mask, SHAVE)["sr"],
                         "seconds": round(seconds, 1), "budget": budget,
                         "adapt": result.facts()})
    return rows


def target_misses(rows: list[dict], name: str) -> list[str]:
    """Each target of fine-tuning that the adapted rows of ``name`` miss, with its size."""
    misses = []
    for scan, (factor, (over_spline, over_model)) in itertools.product(
            TARGET_SCANS, TARGETS.items()):
        cell = [r for r in rows if r["scan"] == scan and r["factor"] == factor
                and r["axis"] == "z"]
        by_method = {r["method"]: r for r in cell}
        for adapted in (r for r in cell if r["method"].startswith(f"{name} + adapt ")):
            budget, where = adapted["budget"], f"{scan} {factor:g}, {adapted['method']}"
            gain = adapted["psnr"] - by_method["cubic spline"]["psnr"]
            if gain < over_spline:
                misses.append(f"{where}: {gain:+.2f} dB over spline (target "
                              f"+{over_spline:g})")
            over = adapted["psnr"] - by_method[name]["psnr"]
            if over_model is not None and over < over_model:
                misses.append(f"{where}: {over:+.2f} dB over {name} (target +{over_model:g})")
            if adapted["adapt"]["seconds"] > budget * 1.1:
                misses.append(f"{where}: adapting took {adapted['adapt']['seconds']:.0f} s "
                              f"(budget {budget:g} s + 10%)")
    return misses


def tables(rows: list[dict]) -> str:
    """Markdown: per scan, spline's PSNR and every other method's gain over it (dB) per
    condition, and each adapted run's steps and wall time."""
    out = []
    for scan in dict.fromkeys(r["scan"] for r in rows):
        mine = [r for r in rows if r["scan"] == scan]
        conditions = sorted(dict.fromkeys(r["condition"] for r in mine),
                            key=lambda c: (c.split()[-1] != "z", float(c.split()[0])))
        cell = {(r["method"], r["condition"]): r for r in mine}
        out += [f"| {scan} | " + " | ".join(conditions) + " |",
                "|---" * (len(conditions) + 1) + "|"]
        for method in dict.fromkeys(r["method"] for r in mine):
            values = []
            for c in conditions:
                row, spline = cell.get((method, c)), cell.get(("cubic spline", c))
                if row is None or spline is None:
                    values.append("")
                elif method == "cubic spline":
                    values.append(f"{row['psnr']:.2f} dB")
                else:
                    extra = ""
                    if "adapt" in row:
                        a = row["adapt"]
                        extra = (f" ({a['steps']} steps, {a['seconds']:.0f} s, "
                                 f"{'kept' if a['kept'] else 'not kept'})")
                    values.append(f"{row['psnr'] - spline['psnr']:+.2f}{extra}")
            out.append(f"| {method} | " + " | ".join(values) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--colin", type=Path, default=COLIN27)
    parser.add_argument("--real", type=Path, help="folder of split_real.py's slabs")
    parser.add_argument("--scans", nargs="+", metavar="NAME", help="only these scans")
    parser.add_argument("--factors", type=float, nargs="+", default=list(FACTORS))
    parser.add_argument("--axes", nargs="+", choices=list(AXES), default=list(AXES))
    parser.add_argument("--model", default=str(SHELF / "thick_slice" / "model"))
    parser.add_argument("--name", default="thick-slice", help="the model's row name")
    parser.add_argument("--adapt", type=float, metavar="SECONDS",
                        help="also fine-tune on each thick scan for this budget first")
    parser.add_argument("--acquisition", choices=[a for a in ACQUISITIONS if a != "none"],
                        help="also score each model output projected onto the input under "
                        "this acquisition (sr --acquisition), named '<method> +<acquisition>'")
    parser.add_argument("--json", type=Path, help="merge the rows into this file (saved "
                        "after every cell)")
    parser.add_argument("--tables", action="store_true", help="only print the tables and "
                        "misses of --json (markdown), computing nothing")
    args = parser.parse_args(argv)
    if args.tables:
        rows = json.loads(args.json.read_text(encoding="utf-8"))["rows"]
        print(tables(rows))
        for miss in target_misses(rows, args.name):
            print(f"miss: {miss}")
        return 0
    found = scans(args.colin, args.real)
    unknown = set(args.scans or ()) - set(found)
    if unknown:
        print(f"evaluate_thick.py: --scans: no such scan: {', '.join(sorted(unknown))}",
              file=sys.stderr)
        return 2
    loaded = load_model(args.model)
    rows = []
    for scan, (hr, masked) in found.items():
        if args.scans and scan not in args.scans:
            continue
        for factor, axis in itertools.product(args.factors, args.axes):
            new = [{"scan": scan, **r} for r in
                   score_cell(hr, masked, factor, axis, loaded, args.name, args.adapt,
                              ("none",) + ((args.acquisition,) if args.acquisition else ()))]
            print(f"{scan}, {factor:g} along {axis}: " + ", ".join(
                f"{r['method']} {r['psnr']:.2f}" for r in new), file=sys.stderr, flush=True)
            rows += new
            if args.json:
                rows = merged(args.json, rows, cell_key)
                write_json(args.json, {"rows": rows,
                                       "misses": target_misses(rows, args.name)})
    for miss in target_misses(rows, args.name):
        print(f"miss: {miss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
