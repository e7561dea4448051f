"""Batch mode throughput: end-to-end volumes/s against the network alone, same device.

N volumes are made from nilearn's 1 mm MNI ICBM152 2009a T1, degraded x2 by
the original observation model (Gaussian blur sigma 1, modcrop, cubic-spline
downsampling) to 2 mm. Each volume differs a little: with ``--crop E`` a
different E, E-1 or E-2 voxel box at a different offset (LR voxels); without,
the whole LR volume less 0-2 voxels at the far end. Intensities are scaled
by 0.8-1.2 too. They are written as float32 .nii.gz files into a temporary
folder. Then:

  (a) end to end: ``srrecnn sr FOLDER --out-dir OUT -m MODEL -s 2 --json``,
      run in this process through ``srrecnn_jax.cli.main`` (reading, zoom,
      network, writing; model loading and compilation included);
  (b) network alone: ``run_network`` on the same prepared volumes (read and
      zoomed beforehand), with the batch's bucket padding, after compiling
      every padded shape once.

The issue's target: (a) reaches at least 85% of (b)'s volumes/s.

    python benchmarks/batch_throughput.py [-n 6] [--crop E] [--model M] [--json OUT]

Needs the `data` extra (nilearn). The default model is the original release's
monomodal x2 weights from ../shared/caffe.
"""

from __future__ import annotations

import argparse
import contextlib
import io as stdio
import json
import math
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import SimpleITK as sitk

from srrecnn_jax import cli, demo, sources
from srrecnn_jax.batch import Options
from srrecnn_jax.degradation import degrade
from srrecnn_jax.images import read_image, to_array, to_image
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.tiling import run_network

DEFAULT_MODEL = sources.release_weights(1)


def padded(shape, bucket: int) -> tuple[int, ...]:
    """``shape`` rounded up to a multiple of ``bucket``, as batch mode pads a volume."""
    return tuple(math.ceil(s / bucket) * bucket for s in shape)


def make_volumes(folder: Path, count: int, crop: int | None) -> list[Path]:
    """Write ``count`` slightly different x2-degraded MNI volumes; their paths."""
    hr_image = demo.mni_t1()
    lr, _ = degrade(to_array(hr_image), (2, 2, 2))
    lr_image = to_image(lr, [2.0] * 3, hr_image.GetOrigin(), hr_image.GetDirection())
    shape = np.array(lr.shape)
    paths = []
    for i in range(count):
        if crop:
            edge = np.minimum(crop - i % 3, shape)
            centre_lo = (shape - edge) // 2
            shift = np.array([(i * 3) % 7 - 3, (i * 5) % 7 - 3, (i * 2) % 7 - 3])
            lo = np.clip(centre_lo + shift, 0, shape - edge)
        else:
            edge, lo = shape - i % 3, np.zeros(3, int)
        hi = lo + edge
        image = lr_image[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]
        image = sitk.Cast(image * (0.8 + 0.1 * (i % 5)), sitk.sitkFloat32)
        path = folder / f"mni_lr_{i:03d}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths


def end_to_end(inputs: Path, out: Path, model: Path) -> tuple[dict, float, list[str]]:
    """Run the batch command in this process: its JSON summary, wall seconds, the argv."""
    argv = ["sr", str(inputs), "--out-dir", str(out), "-m", str(model), "-s", "2", "--json"]
    captured = stdio.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(captured):
        status = cli.main(argv)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"srrecnn {' '.join(argv)}: exit status {status}")
    lines = [ln for ln in captured.getvalue().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]), seconds, argv


def network_only(resolver: SuperResolver, paths: list[Path], options: Options) -> dict:
    """Time ``run_network`` on the prepared volumes as a batch device thread runs it."""
    device = jax.local_devices()[0]
    params = jax.device_put(resolver.model.params, device)
    inference = options.inference
    prepared = [resolver.prepare(read_image(p, "input image"), inference, log=lambda m: None)
                for p in paths]

    def net(volume: np.ndarray) -> np.ndarray:
        with jax.default_device(device):
            return run_network(params, resolver.config, volume, inference.tile,
                               inference.residual, options.bucket, devices=[device])

    shapes = {}
    for p in prepared:  # one compilation per padded shape (and with / without padding mask)
        shape = p.volume.shape[:3]
        full = padded(shape, options.bucket)
        shapes.setdefault((full, full != shape), p.volume)
    start = time.perf_counter()
    for volume in shapes.values():
        net(volume)
    compile_seconds = time.perf_counter() - start
    times = []
    for p in prepared:
        start = time.perf_counter()
        net(p.volume)
        times.append(time.perf_counter() - start)
    return {"seconds": sum(times), "per_volume_seconds": times,
            "warmup_seconds": compile_seconds,
            "compiled_shapes": [{"padded": list(s), "masked": m} for s, m in shapes],
            "output_shapes": [list(p.volume.shape[:3]) for p in prepared]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("-n", "--volumes", type=int, default=6, help="number of volumes")
    parser.add_argument("--crop", type=int, default=None,
                        help="edge of each volume in LR voxels (default: whole LR volume, "
                        "98 x 116 x 94)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="srrecnn-bench-") as tmp:
        folder, out = Path(tmp) / "in", Path(tmp) / "out"
        folder.mkdir()
        paths = make_volumes(folder, args.volumes, args.crop)
        summary, wall, argv = end_to_end(folder, out, args.model)
        # the command's defaults (bucket 8, no tile)
        options = Options(InferenceOptions((2.0, 2.0, 2.0)))
        net = network_only(SuperResolver.load(args.model), paths, options)
        lr_shapes = [list(sitk.ReadImage(str(p)).GetSize()) for p in paths]
    n = args.volumes
    batch_rate, wall_rate = n / summary["seconds"], n / wall
    net_rate = n / net["seconds"]
    results = {
        "model": args.model.name, "volumes": n, "crop": args.crop,
        "lr_shapes": lr_shapes, "sr_shapes": net["output_shapes"],
        "compiled_shapes": net["compiled_shapes"],
        "output_voxels": int(summary["voxels"]),
        "command": "srrecnn " + " ".join(argv),
        "batch_seconds": summary["seconds"], "batch_volumes_per_s": batch_rate,
        "command_wall_seconds": wall, "command_volumes_per_s": wall_rate,
        "batch_device_utilisation": summary["utilisation"],
        "batch_device_seconds": summary["device_seconds"],
        "network_seconds": net["seconds"], "network_volumes_per_s": net_rate,
        "network_per_volume_seconds": net["per_volume_seconds"],
        "network_warmup_seconds": net["warmup_seconds"],
        "ratio_batch_to_network": batch_rate / net_rate,
        "ratio_command_to_network": wall_rate / net_rate,
        "target_ratio": 0.85, "target_met": batch_rate / net_rate >= 0.85,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "device": str(jax.devices()[0]), "devices": len(jax.local_devices()),
        "jax": jax.__version__, "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
    }
    for key in ("volumes", "lr_shapes", "output_voxels", "batch_seconds", "batch_volumes_per_s",
                "command_wall_seconds", "command_volumes_per_s", "batch_device_utilisation",
                "network_seconds", "network_volumes_per_s", "ratio_batch_to_network",
                "ratio_command_to_network", "target_met", "load_average_before",
                "load_average_after", "device", "jax"):
        value = results[key]
        print(f"{key:26s} {value:.4g}" if isinstance(value, float) else f"{key:26s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
