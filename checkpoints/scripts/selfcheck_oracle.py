"""How far the self-check's choice of point spread limits it: the self-check's predicted
gain under each acquisition it can make (``guardrails.self_check_gain_db`` with
``psf="gaussian"`` and ``psf="kspace"``) beside the true gain, per model, scan and
condition, and the sign agreement of two rules: as shipped (the point spread the
input's fall-off suggests, ``guardrails.likely_psf``), and told the true one (oracle).

    python checkpoints/scripts/split_real.py data/real
    python checkpoints/scripts/selfcheck_oracle.py --volumes \\
        data/real/ce_T1_1mm_inferior.nii.gz data/real/ce_T1_1mm_superior.nii.gz \\
        --models mono_x2 mono_x2_robust real_x2 --json runs/selfcheck_oracle_ce.json
    python checkpoints/scripts/selfcheck_oracle.py --colin-crop \\
        --models "original 10L-64 x2" mono_x2 mono_x2_robust real_x2 \\
        --json runs/selfcheck_oracle_colin.json

Each volume (its central 96 x 112 x 96 voxels at most) is acquired at x2 as
``evaluate_real.py`` acquires it (release's Gaussian and k-space box, Rician noise 0-3%
of the HR maximum, seeded) and restored by cubic spline and by each model; the true gain
is the model's PSNR over spline's (peak = HR maximum, 4 voxels shaved). The training
slabs of the real scans serve to study the check; Colin27 only to report it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import SHAVE, central_crop, noisy, shipped_models, write_json  # noqa: E402
from evaluate_real import NOISES, PSFS, SCALE, condition_name  # noqa: E402

from srrecnn_jax import guardrails  # noqa: E402
from srrecnn_jax.checkpoint import load_model  # noqa: E402
from srrecnn_jax.degradation import observe  # noqa: E402
from srrecnn_jax.evaluation import score  # noqa: E402
from srrecnn_jax.images import read_image, to_array  # noqa: E402
from srrecnn_jax.inference import super_resolve_array  # noqa: E402
from srrecnn_jax.sources import COLIN27  # noqa: E402

RULES = {
    "shipped": lambda r: r["check_gaussian" if r["falloff"] < guardrails.FALLOFF_GAUSSIAN
                           else "check_kspace"],
    "oracle": lambda r: r[f"check_{r['psf']}"],
}


def cell_rows(name: str, hr: np.ndarray, psf: str, noise: float, models: dict
              ) -> list[dict]:
    """One row per model for ``hr`` acquired with ``psf`` and ``noise`` %."""
    lr, truth = observe(hr, SCALE, psf=psf)
    lr = noisy(lr, noise, float(hr.max()))
    facts = {"scan": name, "condition": condition_name(psf, noise), "psf": psf,
             "noise": noise, "falloff": guardrails.falloff(lr)}
    rows = []
    for method, loaded in models.items():
        sr = super_resolve_array(loaded.params, loaded.config, lr, SCALE)
        scores = score(sr, truth, lr, None, SHAVE)
        row = {**facts, "method": method,
               "gain_db": scores["sr"]["psnr"] - scores["spline"]["psnr"]}
        for check in PSFS:
            row[f"check_{check}"] = guardrails.self_check_gain_db(
                loaded.params, loaded.config, lr, SCALE, psf=check)
        rows.append(row)
    return rows


def agreement(rows: list[dict]) -> dict[str, str]:
    """Per rule, the cells whose predicted gain has the true gain's sign."""
    return {rule: f"{sum((f(r) > 0) == (r['gain_db'] > 0) for r in rows)}/{len(rows)}"
            for rule, f in RULES.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", nargs="+", type=Path, default=[], metavar="NIFTI")
    p.add_argument("--colin-crop", action="store_true", help="Colin27's central crop")
    p.add_argument("--models", nargs="+", metavar="NAME")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    available = shipped_models(1)
    models = {n: load_model(path) for n, path in available.items()
              if not args.models or n in args.models}
    volumes = {path.name.split(".")[0]: path for path in args.volumes}
    if args.colin_crop:
        volumes["Colin27 crop"] = COLIN27
    rows = []
    for name, path in volumes.items():
        hr = central_crop(to_array(read_image(path), np.float64))
        for psf, noise in itertools.product(PSFS, NOISES):
            rows += cell_rows(name, hr, psf, noise, models)
            write_json(args.json, {"rows": rows, "agreement": agreement(rows)})
    print(json.dumps(agreement(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
