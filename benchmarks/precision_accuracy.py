"""What ``--precision`` costs in accuracy: PSNR on a real scan at fp32, tf32 and bf16.

nilearn's 1 mm MNI ICBM152 2009a T1 is degraded x2 by the original
observation model and super-resolved by a model through the whole pipeline
(``super_resolve_array``) at each precision. Reported per precision: PSNR
against the HR volume (peak = HR maximum), its difference from fp32, and the
largest difference from the fp32 output relative to the HR range.

``fp32-exact`` is ``--exact``: convolutions exact to float32 rounding (on CPU
Winograd F(2, 3) instead of the default F(4, 3)).

On a CPU, ``tf32`` is XLA's default float32 precision, which there is full
float32; the script then also runs ``tf32-emulated``: every convolution's
operands rounded to TF32's 10-bit mantissa (round to nearest even), products
and sums in float32, which is what tensor cores compute. On a GPU the real
``tf32`` is measured as well.

    python benchmarks/precision_accuracy.py [--model M] [--crop N] [--json OUT]

Needs the `data` extra (nilearn). Default model: the original release's
monomodal x2 weights from ../shared/caffe when present, else the project's
``checkpoints/mni_x2``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from srrecnn_jax import conv, demo, model, sources
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.config import PRECISIONS
from srrecnn_jax.degradation import degrade
from srrecnn_jax.evaluation import score
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import finish_array, prepare_array
from srrecnn_jax.tiling import run_network

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = sources.release_weights(1)
SHIPPED = ROOT / "checkpoints" / "mni_x2" / "model"


def round_tf32(x: jax.Array) -> jax.Array:
    """float32 -> nearest float32 with a 10-bit mantissa (ties to even), as TF32 keeps."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    bits = bits + jnp.uint32(0xFFF) + ((bits >> 13) & jnp.uint32(1))
    return jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFE000), jnp.float32)


@jax.jit
def _forward_tf32_emulated(params: model.Params, x: jax.Array) -> jax.Array:
    names = sorted(params, key=lambda n: int(n[4:]))
    for i, name in enumerate(names):
        layer = params[name]
        x = conv.conv3d(round_tf32(x), round_tf32(layer["kernel"]), "SAME") + layer["bias"]
        if i < len(names) - 1:
            x = jax.nn.relu(x)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=ORIGINAL if ORIGINAL.exists() else SHIPPED)
    parser.add_argument("--crop", type=int, default=None,
                        help="use the central N^3 HR voxels only (faster on CPU)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    hr_full = to_array(demo.mni_t1())
    if args.crop:
        lo = [(s - args.crop) // 2 for s in hr_full.shape]
        hr_full = hr_full[tuple(slice(a, a + args.crop) for a in lo)]
    lr, hr = degrade(hr_full, (2, 2, 2))
    loaded = load_model(args.model)
    params, cfg = jax.tree_util.tree_map(jnp.asarray, loaded.params), loaded.config
    prepared = prepare_array(cfg, lr, 2)

    precisions = ["fp32", "fp32-exact"] + list(PRECISIONS[1:])
    if jax.default_backend() == "cpu":
        precisions.append("tf32-emulated")
    outputs, rows = {}, []
    for precision in precisions:
        start = time.perf_counter()
        if precision == "tf32-emulated":
            y = np.asarray(_forward_tf32_emulated(params, jnp.asarray(prepared.volume)[None]))
            y = y[0, ..., 0] + prepared.volume[..., 0]
        elif precision == "fp32-exact":  # --exact: F(2, 3) on CPU instead of F(4, 3)
            y = run_network(params, cfg, prepared.volume, algorithm="exact")
        else:
            y = run_network(params, cfg, prepared.volume, precision=precision)
        outputs[precision] = finish_array(prepared, y)
        seconds = time.perf_counter() - start
        rows.append({"precision": precision,
                     "psnr_db": score(outputs[precision], hr, with_ssim=False)["sr"]["psnr"],
                     "seconds_incl_compile": seconds})
    reference = rows[0]["psnr_db"]
    span = float(hr.max() - hr.min())
    for row in rows:
        row["delta_vs_fp32_db"] = row["psnr_db"] - reference
        row["max_diff_vs_fp32_rel_range"] = float(
            np.abs(outputs[row["precision"]] - outputs["fp32"]).max() / span)
    results = {
        "model": str(args.model.name), "hr_shape": list(hr.shape),
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "jax": jax.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"), "rows": rows,
    }
    print(f"model {results['model']}, HR {hr.shape}, {results['device']}")
    print(f"{'precision':15s} {'PSNR dB':>9s} {'vs fp32 dB':>11s} {'max |diff|/range':>17s}")
    for row in rows:
        print(f"{row['precision']:15s} {row['psnr_db']:9.4f} {row['delta_vs_fp32_db']:+11.4f} "
              f"{row['max_diff_vs_fp32_rel_range']:17.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
