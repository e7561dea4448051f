"""PSNR of cubic spline vs a model on the 1 mm MNI T1 degraded x2, and inference speed.

The high-resolution volume is nilearn's MNI ICBM152 2009a T1 (197 x 233 x 189,
1 mm). It is degraded by the original observation model (Gaussian blur
sigma 1, modcrop, cubic-spline downsampling by 2), then brought back to 1 mm
by cubic spline alone and by the model through the full `srrecnn sr`
pipeline. PSNR uses the HR maximum as peak, over the whole volume and over the
head (HR > 0).

    python benchmarks/mni_x2.py [--model M] [--tile N] [--json OUT]

Needs the `data` extra (nilearn). The default model is the original release's
monomodal x2 weights from ../shared/caffe.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import jax
import numpy as np

from srrecnn_jax import demo, sources
from srrecnn_jax.degradation import degrade
from srrecnn_jax.evaluation import score
from srrecnn_jax.images import to_array, to_image
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.tiling import run_network

DEFAULT_MODEL = sources.release_weights(1)


def network_speed(resolver: SuperResolver, edge: int, repeats: int = 3) -> float:
    """Voxels/s of the network alone on an edge^3 block, median of warm runs."""
    block = np.random.default_rng(0).random((edge,) * 3 + (resolver.config.in_channels,))
    run_network(resolver.model.params, resolver.config, block.astype(np.float32))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_network(resolver.model.params, resolver.config, block.astype(np.float32))
        times.append(time.perf_counter() - start)
    return edge ** 3 / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--speed-edge", type=int, default=64,
                        help="edge of the cube timed for network-only speed")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    hr_image = demo.mni_t1()
    hr_full = to_array(hr_image)
    lr, hr = degrade(hr_full, (2, 2, 2))
    lr_image = to_image(lr, [2.0] * 3, hr_image.GetOrigin(), hr_image.GetDirection())
    resolver = SuperResolver.load(args.model)

    start = time.perf_counter()
    sr = to_array(resolver.run(lr_image, 2, tile=args.tile))
    seconds = time.perf_counter() - start
    whole = score(sr, hr, lr, with_ssim=False)
    head = score(sr, hr, lr, mask=hr > 0, with_ssim=False)
    results = {
        "model": str(args.model.name),
        "hr_shape": list(hr.shape), "lr_shape": list(lr.shape),
        "psnr_spline_db": whole["spline"]["psnr"], "psnr_model_db": whole["sr"]["psnr"],
        "psnr_spline_head_db": head["spline"]["psnr"],
        "psnr_model_head_db": head["sr"]["psnr"],
        "pipeline_seconds": seconds, "pipeline_voxels_per_s": sr.size / seconds,
        "network_voxels_per_s": network_speed(resolver, args.speed_edge),
        "speed_edge": args.speed_edge,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device": str(jax.devices()[0]), "jax": jax.__version__,
        "cpus": len(__import__("os").sched_getaffinity(0)), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for key, value in results.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
