"""One interpolation case: scipy's cubic-spline zoom against the on-device zoom."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import flops, memory
from benchmarks.cases import Case
from benchmarks.timing import jax_sync, measure, no_sync
from srrecnn_jax import interpolation


def phantom(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth float32 volume with edges and a little noise, values about 0-1000."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    head = (x ** 2 / 0.8 + y ** 2 / 0.9 + z ** 2 / 0.7) < 1
    texture = np.sin(9 * x) * np.cos(7 * y) + np.sin(5 * z + 3 * x)
    rng = np.random.default_rng(0)
    volume = head * (600 + 150 * texture) + 20 * rng.standard_normal(shape)
    return np.maximum(volume, 0).astype(np.float32)


def run(case: Case, repeats: int, ceilings: dict[str, dict], torch_opts: dict[str, Any]
        ) -> dict[str, Any]:
    scale = (case.scale,) * 3
    volume = phantom(case.shape)
    out_shape = interpolation.zoomed_shape(volume.shape, scale)
    voxels = int(np.prod(out_shape))
    record: dict[str, Any] = {"output_shape": list(out_shape), "output_voxels": voxels,
                              "flops": flops.zoom_flops(volume.shape, out_shape),
                              "reference": "scipy", "torch": {"skipped": "not applicable"}}
    record["flop_per_output_voxel"] = record["flops"] / voxels
    before = memory.jax_peak()
    ref = measure(lambda: interpolation.zoom(volume, scale), no_sync, repeats, warmup=1)
    expected = ref.first
    ref.first = None
    record["scipy"] = {**ref.to_dict(), "voxels_per_s": voxels / ref.median,
                       "method": "srrecnn_jax.interpolation.zoom (scipy.ndimage.zoom, order 3)"}
    zoom_device = getattr(interpolation, "zoom_device", None)
    if zoom_device is None:
        record["jax"] = {"skipped": "srrecnn_jax.interpolation.zoom_device does not exist yet"}
        record["speed_ratio"] = None
        return record
    timed = measure(lambda: zoom_device(volume, scale), jax_sync, repeats, warmup=1)
    got = np.asarray(timed.first)
    timed.first = None
    span = float(expected.max() - expected.min()) or 1.0
    record["max_abs_diff"] = float(np.max(np.abs(got.astype(np.float64) - expected)))
    record["max_rel_diff"] = record["max_abs_diff"] / span
    ceiling = ceilings.get("fp32", {}).get("tflops")
    record["jax"] = {**timed.to_dict(), **flops.rates(timed.median, voxels, record["flops"],
                                                      ceiling),
                     "method": "srrecnn_jax.interpolation.zoom_device (Precision.HIGHEST)",
                     "memory": memory.with_before(memory.jax_peak(), before)}
    record["speed_ratio"] = ref.median / timed.median
    return record
