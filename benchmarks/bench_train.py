"""One train-step case: the package's jitted step and, optionally, the same step in PyTorch."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from benchmarks import flops, memory, torch_ref
from benchmarks.cases import Case
from benchmarks.timing import jax_sync, measure, paired, ratio
from benchmarks.weights import initial_params
from srrecnn_jax.train.config import config_from
from srrecnn_jax.train.step import compile_step, init_state


def batch_arrays(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """``(B, P, P, P, 1)`` data in [0, 1) and a label close to it (a residual to learn)."""
    rng = np.random.default_rng(0)
    shape = (case.batch, case.patch, case.patch, case.patch, 1)
    data = rng.random(shape, dtype=np.float32)
    label = data + np.float32(0.05) * rng.standard_normal(shape, dtype=np.float32)
    return data, label


def run(case: Case, repeats: int, ceilings: dict[str, dict], torch_opts: dict[str, Any]
        ) -> dict[str, Any]:
    if case.precision != "fp32":
        return {"skipped": "the package's train step runs in float32 only"}
    tc = config_from({"layers": case.layers, "filters": case.filters, "batch": case.batch,
                      "patch": case.patch})
    config, opt = tc.model, tc.optimizer
    per_voxel = flops.network_flops_per_voxel(config)
    voxels = case.batch * case.patch ** 3
    record: dict[str, Any] = {
        "model": {"layers": config.layers, "filters": case.filters,
                  "in_channels": config.in_channels, "kernel": 3, "describe": config.describe()},
        "output_voxels": voxels, "flop_per_output_voxel": 3 * per_voxel,
        "flops": flops.train_flops(config, case.batch, case.patch),
        "optimizer": f"optax Adam lr {opt.learning_rate:g} (bias x{opt.bias_lr_mult:g}), "
                     f"loss {tc.loss}",
        "method": "srrecnn_jax.train.step.compile_step (state donated), device-resident batch",
    }
    data, label = batch_arrays(case)
    before = memory.jax_peak()
    start = time.perf_counter()
    params0 = initial_params(case.layers, case.filters)
    state = init_state(jax.random.key(0), tc, params=params0)
    batch = {"data": jax.device_put(data), "label": jax.device_put(label)}
    compiled = compile_step(tc).lower(state, batch).compile()
    record["compile_s"] = time.perf_counter() - start
    record["xla_memory"] = memory.xla_memory(compiled)
    holder = {"state": state}
    del state

    def call():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    timed = measure(call, jax_sync, repeats, warmup=1)
    first_loss = float(timed.first)
    timed.first = None
    ceiling = ceilings.get(case.precision, {}).get("tflops")
    jax_memory = memory.with_before(memory.jax_peak(), before)
    record["torch"] = _torch(tc, params0, data, label, first_loss, repeats, ceiling,
                             torch_opts, voxels, record["flops"], (call, jax_sync))
    holder.clear()
    record["jax"] = paired(timed, record["torch"], voxels, record["flops"], ceiling)
    record["jax"].update(first_loss=first_loss, memory=jax_memory)
    record["reference"] = "torch"
    record["speed_ratio"] = ratio(record)
    return record


def _torch(tc, params, data, label, first_loss, repeats, ceiling, opts, voxels, total_flops,
           rival):
    if opts.get("skip"):
        return {"skipped": opts["skip"]}
    opt = tc.optimizer
    try:
        rec = torch_ref.train(params, tc.model, data, label, first_loss,
                              opt.learning_rate, opt.bias_lr_mult, (opt.beta1, opt.beta2),
                              opt.epsilon, opts["device"], repeats, opts["compile"], rival)
    except Exception as e:  # PyTorch's failure is recorded, the JAX numbers stand
        return {"error": f"{type(e).__name__}: {e}"}
    rec.update(flops.rates(rec["timing"]["median_s"], voxels, total_flops, ceiling))
    return rec
