"""The training loop: data-parallel steps, orbax checkpoints, resume, metrics log.

A run folder holds::

    RUN/train_config.json     the TrainConfig (a rerun with another config is refused)
    RUN/checkpoints/<step>/   orbax: "state" (params, optimizer state, step) + "meta" (JSON)
    RUN/metrics.jsonl         one line per logged step
    RUN/curves.png            loss and held-out PSNR curves
    RUN/model/                the final model folder, for `srrecnn sr`

Resume order: read train_config.json, build the abstract state from it
(``jax.eval_shape``), restore the latest checkpoint into it, continue from its
step. Batches are a function of the step (``data.PatchSet.batch``), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from srrecnn_jax import io
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.curves import draw_curves
from srrecnn_jax.data import PatchSet, RandomPatches, prefetch
from srrecnn_jax.degradation import degrade
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.metrics import psnr, ssim
from srrecnn_jax.training import TrainConfig, compile_step, config_from, init_state


def local_copy(tree):
    """A replicated (possibly multi-process) pytree as NumPy, from this process's copy."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)


def _manager(run_dir: Path, keep: int):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=options,
                                 item_names=("state", "meta"))


def _abstract_state(config: TrainConfig, sharding) -> dict:
    shapes = jax.eval_shape(lambda key: init_state(key, config), jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_state(run_dir: Path, step: int | None = None,
                  sharding=None) -> tuple[dict, TrainConfig]:
    """The state of a run's checkpoint (latest by default) and the run's config."""
    import orbax.checkpoint as ocp

    config = read_run_config(run_dir)
    manager = _manager(run_dir, config.keep)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise SrrecnnError(f"{run_dir}: no checkpoint yet")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_state(config, sharding))))
    return restored.state, config


def read_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "train_config.json"
    try:
        return config_from(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise SrrecnnError(f"{run_dir}: not a training run (no train_config.json)") from None
    except ValueError as e:
        raise SrrecnnError(f"{path}: invalid ({e})") from None


def validate(params, model_config: ModelConfig, scale: float,
             volumes: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean PSNR/SSIM of the model and of cubic spline on held-out HR volumes.

    Each (x, y, z) HR volume is degraded by the observation model at
    ``scale`` and restored both ways; PSNR peak = HR maximum.
    """
    scale = (scale,) * 3
    scores: dict[str, list[float]] = {}
    for hr in volumes:
        lr, truth = degrade(hr, scale)
        estimates = {"val": super_resolve_array(params, model_config, lr, scale),
                     "val_spline": zoom(lr, scale)}
        span = float(truth.max() - truth.min())
        for name, estimate in estimates.items():
            scores.setdefault(f"{name}_psnr", []).append(psnr(estimate, truth))
            scores.setdefault(f"{name}_ssim", []).append(ssim(estimate, truth, span))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train(config: TrainConfig, data: PatchSet | RandomPatches, run_dir: Path,
          init: LoadedModel | None = None, stop: threading.Event | None = None,
          on_log: Callable[[dict], None] | None = None,
          validation: Sequence[np.ndarray] = ()) -> dict:
    """Train (or resume) a run to ``config.max_iter`` steps, or until ``stop`` is set.

    Args:
      config: the run's settings.
      data: training patches (channels must match ``config.in_channels``).
      run_dir: the run folder (created; resumed if it holds checkpoints).
      init: parameters to fine-tune from (ignored when resuming).
      stop: when set, the loop saves a checkpoint at the current step and returns.
      on_log: receives each logged metrics dict.
      validation: held-out (x, y, z) HR volumes, scored every
        ``config.validate_every`` steps and at the end (see ``validate``).

    Returns:
      The last logged metrics.
    """
    import orbax.checkpoint as ocp

    stop = stop or threading.Event()
    if data.channels != config.in_channels:
        raise SrrecnnError(f"training data has {data.channels} channel(s) but the model takes "
                           f"{config.in_channels} (set in_channels)")
    devices = jax.devices()
    if config.batch % len(devices):
        raise SrrecnnError(f"batch {config.batch} does not split over {len(devices)} devices")
    process, processes = jax.process_index(), jax.process_count()
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    if init is not None and init.config != config.model_config():
        raise SrrecnnError(f"--init: model {init.config.describe()} does not match the "
                           f"configured {config.model_config().describe()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "train_config.json"
    if config_file.exists():
        if read_run_config(run_dir) != config:
            raise SrrecnnError(f"{run_dir}: holds a run with other settings; use a new folder "
                               "or the same settings to resume")
    elif process == 0:
        io.write_text_atomic(config_file, json.dumps(config.to_dict(), indent=2) + "\n")

    manager = _manager(run_dir, config.keep)
    start = manager.latest_step() or 0
    if start:
        state, _ = restore_state(run_dir, start, replicated)
    else:
        params = None if init is None else init.params
        state = jax.device_put(init_state(jax.random.PRNGKey(config.seed), config, params),
                               replicated)
    step_fn = compile_step(config, mesh)

    def save(step: int) -> None:
        meta = {"train_config": config.to_dict(), "model": config.model_config().to_dict()}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)

    stats: dict = {}
    last: dict = {}
    tick, tick_step = time.perf_counter(), start
    step = start
    log_file = run_dir / "metrics.jsonl"
    batches = prefetch(data, start, config.max_iter, config.batch, process, processes,
                       stats=stats)
    for local in batches:
        batch = jax.tree_util.tree_map(
            lambda a: jax.make_array_from_process_local_data(split, a), local)
        state, metrics = step_fn(state, batch)
        step += 1
        done = step == config.max_iter or stop.is_set()
        if step % config.log_every == 0 or done:
            values = {k: float(v) for k, v in local_copy(metrics).items()}
            if not values.pop("finite"):
                raise SrrecnnError(f"step {step}: loss or gradient is not finite "
                                   f"(loss {values['loss']}); lower the learning rate")
            seconds = time.perf_counter() - tick
            last = {"step": step, **values,
                    "steps_per_s": (step - tick_step) / max(seconds, 1e-9),
                    "data_wait_fraction": stats.get("wait_seconds", 0.0) / max(seconds, 1e-9)}
            stats["wait_seconds"], tick, tick_step = 0.0, time.perf_counter(), step
            if validation and (step % config.validate_every == 0 or done):
                last |= validate(local_copy(state["params"]), config.model_config(),
                                 config.validation_scale, validation)
            if process == 0:
                with open(log_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
                if "val_psnr" in last or done:
                    draw_curves(log_file, run_dir / "curves.png")
            if on_log:
                on_log(last)
        if step % config.checkpoint_every == 0 or done or stop.is_set():
            save(step)  # stop may have been set by on_log or a signal since `done`
        if stop.is_set():
            break
    batches.close()
    manager.wait_until_finished()
    if step == config.max_iter and process == 0:
        params = local_copy(state["params"])
        save_model(run_dir / "model", LoadedModel(params, config.model_config(),
                                                  origin={"kind": "srrecnn-jax training",
                                                          "run": str(run_dir.resolve()),
                                                          "steps": step}), force=True)
    return last
