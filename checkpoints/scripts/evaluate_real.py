"""Models for real acquisitions, scored at x2 under each observation model and noise level
on Colin27 and on the held-out slab of every real scan with a truth, in one run.

    python checkpoints/scripts/split_real.py data/real        # the held-out slabs
    python checkpoints/scripts/evaluate_real.py --real data/real \\
        [--models real_x2 mono_x2 ...] [--head-models real_x2 mono_x2] \\
        [--scans "Colin27 head" ...] [--conditions "k-space 1%" ...] \\
        [--json checkpoints/scores/real_acquisitions.json]

Scans: Colin27 (evaluation only: no model here was trained or selected on it), its
central 96 x 112 x 96 crop (``crop``) and the whole head (``head``, scored inside
``evaluation.head_mask``); the held-out z slab of each real scan
(``sources.REAL_HELD_OUT``, files ``<name>_heldout.nii.gz`` of ``split_real.py``).
Each is acquired at x2 (``degradation.observe``) by the release's Gaussian model
(``gaussian``) and by a scanner's k-space box with no filter (``kspace``), with Rician
noise of 0, 1, 2 and 3 % of the HR maximum (seeded), and restored by cubic spline and by
each model through ``super_resolve_array`` (as ``srrecnn sr``, with its default output
ceiling). PSNR peak = HR maximum, 4 voxels shaved at every face, SSIM window sigma 1.5.

Per model, scan and condition the row also holds the output's maximum over the input's
(``max_over_input``), the voxels the ceiling clipped, and the self-check
(``guardrails.check_scan`` on the low-resolution input): its predicted gain beside the
true gain over spline. The summary counts the sign agreements (a confusion table), each
model's cells against ``--versus`` (wins, losses), and checks the issue's targets for
``--candidate``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import SHAVE, central_crop, merged, noisy, shipped_models, write_json  # noqa: E402

from srrecnn_jax import guardrails  # noqa: E402
from srrecnn_jax.checkpoint import load_model  # noqa: E402
from srrecnn_jax.config import ACQUISITIONS  # noqa: E402
from srrecnn_jax.degradation import observe  # noqa: E402
from srrecnn_jax.evaluation import head_mask, score  # noqa: E402
from srrecnn_jax.images import read_image, to_array  # noqa: E402
from srrecnn_jax.inference import super_resolve_array  # noqa: E402
from srrecnn_jax.inference_options import CEILING  # noqa: E402
from srrecnn_jax.sources import COLIN27, REAL_HELD_OUT  # noqa: E402

PSFS = ("gaussian", "kspace")
NOISES = (0.0, 1.0, 2.0, 3.0)
SCALE = (2, 2, 2)
#: The issue's targets for the default model, gain over spline in dB: (psf, noise) ->
#: the least gain allowed.
TARGETS = {("kspace", 0.0): 1.0, ("kspace", 1.0): 0.5, ("gaussian", 0.0): 2.0,
           ("gaussian", 1.0): 1.0, ("gaussian", 2.0): 0.0, ("gaussian", 3.0): 0.0}


def suffixed(method: str, acquisition: str) -> str:
    """A method's row name, with `` +<acquisition>`` when its output was projected."""
    return method if acquisition == "none" else f"{method} +{acquisition}"


def condition_name(psf: str, noise: float) -> str:
    return f"{'k-space' if psf == 'kspace' else 'gaussian'} {noise:g}%"


def scans(colin: Path, real: Path) -> dict[str, tuple[np.ndarray, bool]]:
    """Scan name -> (HR volume, score inside the head mask)."""
    hr = to_array(read_image(colin), np.float64)
    found = {"Colin27 crop": (central_crop(hr), False), "Colin27 head": (hr, True)}
    for name in REAL_HELD_OUT:
        path = real / f"{name}_heldout.nii.gz"
        found[name] = (to_array(read_image(path), np.float64), False)
    return found


def score_cell(hr: np.ndarray, masked: bool, psf: str, noise: float,
               models: dict, check: bool = True, acquisition: str = "none") -> list[dict]:
    """Rows for one scan and condition: spline first, then each model (its output made
    consistent with the input under ``acquisition``, ``consistency.project``)."""
    lr, truth = observe(hr, SCALE, psf=psf)
    lr = noisy(lr, noise, float(hr.max()))
    mask = head_mask(truth) if masked else None
    rows, spline = [], None
    for method, loaded in models.items():
        start = time.perf_counter()
        sr = super_resolve_array(loaded.params, loaded.config, lr, SCALE,
                                 acquisition=acquisition)
        seconds = round(time.perf_counter() - start, 1)
        scores = score(sr, truth, lr if spline is None else None, mask, SHAVE)
        if spline is None:
            spline = scores["spline"]
            rows.append({"method": "cubic spline", **spline})
        top = float(lr.max())
        row = {"method": method, **scores["sr"], "seconds": seconds,
               "gain_db": round(scores["sr"]["psnr"] - spline["psnr"], 3),
               "max_over_input": round(float(sr.max()) / top, 4),
               "clipped": int(np.count_nonzero(sr >= np.float32(CEILING * top)))}
        if check:
            row |= guardrails.check_scan(loaded.params, loaded.config, lr, SCALE)
        rows.append(row)
    return rows


def confusion(rows: list[dict]) -> dict[str, int]:
    """Sign of the self-check's predicted gain against the true gain's, over the rows that
    have both: ``{"agree", "cells", "tp", "tn", "fp", "fn"}`` (positive: beats spline)."""
    counts = dict.fromkeys(("tp", "tn", "fp", "fn"), 0)
    for r in rows:
        if r.get("self_check_gain_db") is None or "gain_db" not in r:
            continue
        predicted, true = r["self_check_gain_db"] > 0, r["gain_db"] > 0
        counts[("t" if predicted == true else "f") + ("p" if predicted else "n")] += 1
    cells = sum(counts.values())
    return {"agree": counts["tp"] + counts["tn"], "cells": cells, **counts}


def versus(rows: list[dict], method: str, other: str) -> dict[str, int]:
    """Cells (scan x condition) where ``method``'s PSNR is above / below ``other``'s."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["scan"], r["condition"]), {})[r["method"]] = r["psnr"]
    wins = losses = 0
    for found in cells.values():
        if method in found and other in found:
            wins += int(found[method] > found[other])
            losses += int(found[method] < found[other])
    return {"wins": wins, "losses": losses}


def target_misses(rows: list[dict], method: str) -> list[str]:
    """The issue's targets ``method`` misses (gain over spline by scan and condition), and
    any output above the ceiling, each in words with its size."""
    misses = []
    for r in rows:
        if r["method"] != method:
            continue
        least = TARGETS.get((r["psf"], r["noise"]))
        if least is not None and r["gain_db"] < least:
            misses.append(f"{r['scan']}, {r['condition']}: {r['gain_db']:+.2f} dB over spline "
                          f"(target {least:+.1f})")
        if r["max_over_input"] > CEILING + 1e-6:
            misses.append(f"{r['scan']}, {r['condition']}: output at "
                          f"{r['max_over_input']:.2f}x the input's maximum")
    return misses


def table(rows: list[dict], scan: str) -> str:
    """Markdown: one row per method, one column per condition; spline in dB, models as
    their gain over spline."""
    mine = [r for r in rows if r["scan"] == scan]
    conditions = list(dict.fromkeys(r["condition"] for r in mine))
    methods = list(dict.fromkeys(r["method"] for r in mine))
    lines = [f"| {scan} | " + " | ".join(conditions) + " |",
             "|---" * (len(conditions) + 1) + "|"]
    for method in methods:
        cells = []
        for condition in conditions:
            found = [r for r in mine if (r["method"], r["condition"]) == (method, condition)]
            if not found:
                cells.append("")
            elif "gain_db" in found[0]:
                cells.append(f"{found[0]['gain_db']:+.2f}")
            else:
                cells.append(f"{found[0]['psnr']:.2f} dB")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict], candidate: str | None, baseline: str) -> dict:
    methods = list(dict.fromkeys(r["method"] for r in rows if "gain_db" in r))
    out = {"confusion": {m: confusion([r for r in rows if r["method"] == m])
                         for m in methods},
           "versus": {m: versus(rows, m, baseline) for m in methods if m != baseline},
           "baseline": baseline}
    out["confusion"]["all"] = confusion(rows)
    if candidate:
        out["candidate"] = candidate
        out["misses"] = target_misses(rows, candidate)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--colin", type=Path, default=COLIN27, help="Colin27 (mricron-data)")
    p.add_argument("--real", type=Path, default=Path("data/real"),
                   help="the held-out slabs of split_real.py (default data/real)")
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="methods besides spline (shipped names or the original weights' "
                   "name); default: every monomodal one")
    p.add_argument("--extra", type=Path, action="append", default=[], metavar="MODEL",
                   help="also score this model folder or training run, named by its path")
    p.add_argument("--head-models", nargs="+", metavar="NAME",
                   help="only these methods on Colin27's whole head (minutes per condition "
                   "each on 2 cores); default: all")
    p.add_argument("--scans", nargs="+", metavar="NAME", help="only these scans")
    p.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="only these conditions, named as in the tables ('k-space 1%%')")
    p.add_argument("--acquisition", choices=ACQUISITIONS, default="none",
                   help="make each model's output consistent with its input under this "
                   "acquisition (sr --acquisition), whatever the condition: the methods "
                   "are named '<model> +<acquisition>' and carry no self-check")
    p.add_argument("--candidate", help="the method whose targets are checked")
    p.add_argument("--versus", default="mono_x2",
                   help="the method wins and losses are counted against (default mono_x2)")
    p.add_argument("--json", type=Path, help="write the rows and the summary here, after "
                   "every cell; rows not scored this time are kept from the file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    available = shipped_models(1)
    unknown = sorted(set(args.models or ()) - set(available))
    if unknown:
        print(f"evaluate_real.py: --models: no such method: {', '.join(unknown)}",
              file=sys.stderr)
        return 2
    models = {name: load_model(path) for name, path in available.items()
              if not args.models or name in args.models}
    models |= {str(path): load_model(path) for path in args.extra}
    models = {suffixed(name, args.acquisition): m for name, m in models.items()}
    rows = []
    for scan, (hr, masked) in scans(args.colin, args.real).items():
        if args.scans and scan not in args.scans:
            continue
        chosen = ({k: v for k, v in models.items() if k.split(" +")[0] in args.head_models}
                  if args.head_models and scan == "Colin27 head" else models)
        for psf, noise in itertools.product(PSFS, NOISES):
            name = condition_name(psf, noise)
            if args.conditions and name not in args.conditions:
                continue
            cell = score_cell(hr, masked, psf, noise, chosen, check=args.acquisition == "none",
                              acquisition=args.acquisition)
            rows += [{"scan": scan, "condition": name, "psf": psf, "noise": noise, **r}
                     for r in cell]
            said = ", ".join(f"{r['method']} {r.get('gain_db', r['psnr']):+.2f}" for r in cell)
            print(f"{scan}, {name}: {said}", file=sys.stderr, flush=True)
            if args.json:  # after every cell: a long run stopped keeps what it scored
                save(args.json, rows, args)
    for scan in dict.fromkeys(r["scan"] for r in rows):
        print(table(rows, scan) + "\n")
    print(json.dumps(summary(rows, args.candidate, args.versus), indent=1))
    return 0


def save(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    """The rows and their summary to ``path``, through a temporary name; rows of a scan,
    condition and method not scored this time are kept from the file."""
    rows = merged(path, rows, cell_key)
    write_json(path, {"rows": rows, "summary": summary(rows, args.candidate, args.versus)})


def cell_key(row: dict) -> tuple[str, str, str]:
    """What a row scores: its scan, condition and method."""
    return row["scan"], row["condition"], row["method"]


if __name__ == "__main__":
    sys.exit(main())
