"""One inference case: the JAX network (whole volume, or tiled through run_network) and,
optionally, the same network in PyTorch."""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import numpy as np

from benchmarks import flops, memory, reference, torch_ref
from benchmarks.cases import Case
from benchmarks.timing import jax_sync, measure, no_sync, paired, ratio
from benchmarks.weights import initial_params
from srrecnn_jax import model
from srrecnn_jax.config import recnn
from srrecnn_jax.tiling import run_network


def input_volume(case: Case) -> np.ndarray:
    """``(1, X, Y, Z, 1)`` float32 uniform in [0, 1) (an image normalised by its maximum)."""
    rng = np.random.default_rng(0)
    return rng.random((1, *case.shape, 1), dtype=np.float32)


def run(case: Case, repeats: int, ceilings: dict[str, dict], torch_opts: dict[str, Any]
        ) -> dict[str, Any]:
    config = recnn(layers=case.layers, filters=case.filters)
    per_voxel = flops.network_flops_per_voxel(config)
    voxels = int(np.prod(case.shape))
    record: dict[str, Any] = {
        "model": {"layers": config.layers, "filters": case.filters,
                  "in_channels": config.in_channels, "kernel": 3, "describe": config.describe()},
        "output_voxels": voxels, "flop_per_output_voxel": per_voxel, "flops": per_voxel * voxels,
    }
    params = jax.device_put(initial_params(case.layers, case.filters))
    x = input_volume(case)
    before = memory.jax_peak()
    start = time.perf_counter()
    rival = None
    if case.tile:
        volume = x[0]

        def call():
            return run_network(params, config, volume, tile=case.tile,
                               precision=case.precision)
        timed = measure(call, no_sync, repeats, warmup=1)
        output = timed.first[None, ..., None]
        record["compile_s"] = None
        record["xla_memory"] = None
        record["method"] = (f"srrecnn_jax.tiling.run_network(tile={case.tile}"
                            f", precision={case.precision!r}): NumPy in and out")
    else:
        fn = jax.jit(functools.partial(model.apply, config=config, precision=case.precision))
        x_dev = jax.device_put(x)
        compiled = fn.lower(params, x_dev).compile()
        record["compile_s"] = time.perf_counter() - start
        record["xla_memory"] = memory.xla_memory(compiled)
        timed = measure(lambda: compiled(params, x_dev), jax_sync, repeats, warmup=1)
        rival = (lambda: compiled(params, x_dev), jax_sync)
        output = np.asarray(timed.first)
        record["method"] = ("jax.jit(model.apply) on a device-resident (1, X, Y, Z, 1) input; "
                            "output left on the device")
    record["float64_max_rel_diff"] = _float64_agreement(case, output)
    ceiling = ceilings.get(case.precision, {}).get("tflops")
    jax_memory = memory.with_before(memory.jax_peak(), before)
    timed.first = None
    record["torch"] = _torch(case, params, config, x, output, repeats, ceiling, torch_opts,
                             rival)
    record["jax"] = paired(timed, record["torch"], voxels, record["flops"], ceiling)
    record["jax"]["memory"] = jax_memory
    record["reference"] = "torch"
    record["speed_ratio"] = ratio(record)
    return record


#: Output voxels x layers x filters^2 up to which the float64 reference runs (smoke sizes:
#: about a second of NumPy); larger cases record None.
FLOAT64_WORK_LIMIT = 16 ** 3 * 3 * 8 ** 2


def _float64_agreement(case: Case, output: np.ndarray) -> float | None:
    """max |JAX - float64 reference| / reference range, for small cases (else None)."""
    voxels = int(np.prod(case.shape))
    if voxels * case.layers * case.filters ** 2 > FLOAT64_WORK_LIMIT:
        return None
    x = input_volume(case)[0].astype(np.float64)
    expected = reference.reference_network(initial_params(case.layers, case.filters), x,
                                           False) + x[..., 0]  # recnn: residual
    error = np.abs(np.asarray(output, np.float64).reshape(expected.shape) - expected).max()
    return float(error / (expected.max() - expected.min()))


def _torch(case: Case, params, config, x, output, repeats, ceiling, opts, rival
           ) -> dict[str, Any]:
    if opts.get("skip"):
        return {"skipped": opts["skip"]}
    if case.tile:
        return {"skipped": "the tiled pipeline (run_network) has no PyTorch counterpart; "
                           "compare the whole-volume cases"}
    try:
        rec = torch_ref.inference(initial_params(case.layers, case.filters), config, x, output,
                                  case.precision, opts["device"], repeats, opts["compile"],
                                  rival)
    except Exception as e:  # PyTorch's failure is recorded, the JAX numbers stand
        return {"error": f"{type(e).__name__}: {e}"}
    voxels = int(np.prod(case.shape))
    rec.update(flops.rates(rec["timing"]["median_s"], voxels,
                           flops.network_flops_per_voxel(config) * voxels, ceiling))
    return rec
