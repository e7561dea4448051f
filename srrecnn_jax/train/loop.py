"""The training loop: data-parallel steps, orbax checkpoints, resume, metrics log.

A run folder holds (names in ``checkpoint``, which reads runs without this code)::

    RUN/train_config.json     the TrainConfig (a rerun with another config is refused,
                              except a larger max_iter: the run trains on)
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

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from srrecnn_jax import parallel
from srrecnn_jax.checkpoint import (
    RUN_CHECKPOINTS,
    RUN_CONFIG,
    RUN_META,
    RUN_MODEL,
    RUN_STATE,
    LoadedModel,
    checkpoint_steps,
    load_model,
    save_model,
)
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.evaluation import validate
from srrecnn_jax.files import is_list_file
from srrecnn_jax.images import read_volume, read_volume_spacing
from srrecnn_jax.limits import memory_bytes, size_text
from srrecnn_jax.plots import draw_curves
from srrecnn_jax.train.config import TrainConfig
from srrecnn_jax.train.data import PatchSet, RandomPatches, check_degradable, prefetch
from srrecnn_jax.train.settings import read_run_config, resolve
from srrecnn_jax.train.step import compile_step, init_state, micro_batches
from srrecnn_jax.writing import write_text_atomic


def _manager(run_dir: Path, keep: int):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager((run_dir / RUN_CHECKPOINTS).absolute(), options=options,
                                 item_names=(RUN_STATE, RUN_META))


def _abstract_state(config: TrainConfig, sharding) -> dict:
    shapes = jax.eval_shape(lambda key: init_state(key, config), jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_state(run_dir: Path, step: int | None = None,
                  sharding=None) -> tuple[dict, TrainConfig]:
    """The state of a run's checkpoint (latest by default) and the run's config."""
    import orbax.checkpoint as ocp

    config = read_run_config(run_dir)
    steps = checkpoint_steps(run_dir)
    step = (steps[-1] if steps else None) if step is None else step
    if step is None:
        raise SrrecnnError(f"{run_dir}: no checkpoint yet")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = _manager(run_dir, config.keep).restore(step, args=ocp.args.Composite(**{
        RUN_STATE: ocp.args.StandardRestore(_abstract_state(config, sharding))}))
    return restored[RUN_STATE], config


def _validation_metrics(params, config: TrainConfig,
                        volumes: Sequence[np.ndarray]) -> dict[str, float]:
    scores = validate(params, config.model, config.validation_scale, volumes, config.blur)
    return {f"val{'' if name == 'sr' else '_' + name}_{metric}": value
            for name, metrics in scores.items() for metric, value in metrics.items()}


def train(config: TrainConfig, data: PatchSet | RandomPatches, run_dir: Path,
          init: LoadedModel | None = None, stop: threading.Event | None = None,
          on_log: Callable[[dict], None] | None = None,
          validation: Sequence[np.ndarray] = ()) -> dict:
    """Train (or resume) a run to ``config.schedule.max_iter`` steps, or until ``stop`` is set.

    Args:
      config: the run's settings.
      data: training patches (channels must match ``config.model.in_channels``).
      run_dir: the run folder (created; resumed if it holds checkpoints).
      init: parameters to fine-tune from (ignored when resuming).
      stop: when set, the loop saves a checkpoint at the current step and returns.
      on_log: receives each logged metrics dict.
      validation: held-out (x, y, z) HR volumes, scored every
        ``config.validate_every`` steps and at the end (see ``validate``).

    Returns:
      The last logged metrics.
    """
    stop = stop or threading.Event()
    mesh = parallel.data_mesh()
    _check_inputs(config, data, init, mesh.size)
    process = jax.process_index()
    replicated, _ = parallel.mesh_shardings(mesh)
    _claim_run_dir(run_dir, config, process)
    # What the model folder records for the warnings about untrained inputs; each
    # checkpoint's metadata too, so a run still training can be shipped as it is.
    trained = {"trained_scales": _trained_scales(data.scales), "trained_spacing": data.spacing}
    run = _Run(config, run_dir, _manager(run_dir, config.keep), process,
               {"train_config": config.to_dict(), "model": config.model.to_dict(), **trained})
    start = run.manager.latest_step() or 0
    if process == 0:
        _forget_later_logs(run.log_file, run_dir / "curves.png", start)
    if start:
        state, _ = restore_state(run_dir, start, replicated)
    else:
        params = None if init is None else init.params
        state = jax.device_put(init_state(jax.random.PRNGKey(config.seed), config, params),
                               replicated)
    state, step, last = _train_steps(run, mesh, state, data, start, stop, on_log, validation)
    run.manager.wait_until_finished()
    if step == config.schedule.max_iter and process == 0:
        params = parallel.local_copy(state["params"])
        save_model(run_dir / RUN_MODEL, LoadedModel(params, config.model, **trained,
                                                  origin={"kind": "srrecnn-jax training",
                                                          "run": str(run_dir.resolve()),
                                                          "steps": step}), force=True)
    return last


def _check_inputs(config: TrainConfig, data: PatchSet | RandomPatches,
                  init: LoadedModel | None, devices: int) -> None:
    """Refuse data, a batch or an init model that do not fit the settings."""
    model_config = config.model
    if data.channels != model_config.in_channels:
        raise SrrecnnError(f"training data has {data.channels} channel(s) but the model takes "
                           f"{model_config.in_channels} (set in_channels)")
    if config.batch % devices:
        raise SrrecnnError(f"batch {config.batch} does not split over {devices} devices")
    if init is not None and init.config != model_config:
        raise SrrecnnError(f"model {init.config.describe()} does not match the "
                           f"configured {model_config.describe()}", "init")
    _check_memory(config, (data.patch,) * 3)


#: Batches held at once: those read ahead (``prefetch``'s depth), the one being made, the
#: one in the step and its copy on the device.
BATCHES_IN_MEMORY = 7


def _check_memory(config: TrainConfig, patch: Sequence[int]) -> None:
    """Refuse, before anything is made, a batch whose patches (read ahead, on the host and
    the device) and the step's activations (a micro-batch's, forward and backward) would
    not fit this machine's memory: a huge ``batch`` grew memory without bound instead."""
    voxels = float(np.prod([float(n) for n in patch]))
    model = config.model
    data = config.batch * voxels * (model.in_channels + 1) * 4 * BATCHES_IN_MEMORY
    micro = config.batch / micro_batches(config)
    activations = micro * voxels * sum(model.filters) * 4 * 3
    need, have = data + activations, memory_bytes()
    if need > have:
        raise SrrecnnError(f"{config.batch} patches of {size_text(patch)} voxels need about "
                           f"{need / 2**30:.3g} GiB of memory, more than the "
                           f"{have / 2**30:.3g} GiB of this machine", "batch")


def _claim_run_dir(run_dir: Path, config: TrainConfig, process: int) -> None:
    """Create ``run_dir`` and record ``config`` in it, refusing a run of other settings and
    a ``max_iter`` below the step the run has reached."""
    max_iter = config.schedule.max_iter
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / RUN_CONFIG
    done_steps = checkpoint_steps(run_dir)
    started = bool(done_steps) or (run_dir / RUN_MODEL).exists()
    saved = read_run_config(run_dir) if config_file.exists() and started else None
    if saved is not None and not _continues(saved, config):
        raise SrrecnnError(f"{run_dir}: holds a run with other settings; use a new folder "
                           "or the same settings to resume (max_iter may differ)")
    if done_steps and done_steps[-1] > max_iter:  # checked before the settings are saved
        raise SrrecnnError(f"{max_iter} is below the step the run in {run_dir} has reached "
                           f"({done_steps[-1]})", "max_iter")
    if process == 0 and saved != config:
        write_text_atomic(config_file, json.dumps(config.to_dict(), indent=2) + "\n")


@dataclasses.dataclass
class _Run:
    """A run being trained: its settings, folder, checkpoint manager, this process's index
    and what each checkpoint's metadata records."""

    config: TrainConfig
    run_dir: Path
    manager: Any
    process: int
    meta: dict

    @property
    def log_file(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def check_finite(self, step: int, metrics: dict) -> dict[str, float]:
        """The step's metrics as numbers; an error if they are not finite."""
        values = {k: float(v) for k, v in parallel.local_copy(metrics).items()}
        if not values.pop("finite"):
            self.manager.wait_until_finished()  # the good checkpoints in flight are kept
            good = [s for s in checkpoint_steps(self.run_dir) if s < step]
            kept = f"; the last good checkpoint is step {good[-1]}" if good else ""
            raise SrrecnnError(f"step {step}: loss, gradient or updated parameters are not "
                               f"finite (loss {values['loss']}): check the data for NaN or "
                               f"infinite values, or lower the learning rate{kept}")
        return values

    def save(self, step: int, state: dict) -> None:
        import orbax.checkpoint as ocp

        self.manager.save(step, args=ocp.args.Composite(**{
            RUN_STATE: ocp.args.StandardSave(state), RUN_META: ocp.args.JsonSave(self.meta)}),
            force=True)

    def log(self, metrics: dict, done: bool) -> None:
        """Append ``metrics`` to the log (process 0), and redraw the curves."""
        if self.process == 0:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
            if "val_psnr" in metrics or done:
                draw_curves(self.log_file, self.run_dir / "curves.png")


def _train_steps(run: _Run, mesh, state: dict, data: PatchSet | RandomPatches, start: int,
                 stop: threading.Event, on_log: Callable[[dict], None] | None,
                 validation: Sequence[np.ndarray]) -> tuple[dict, int, dict]:
    """The steps from ``start`` until ``max_iter`` or ``stop``: logged, validated and
    checkpointed as the settings say. Returns the state, the step and the last metrics."""
    config, max_iter = run.config, run.config.schedule.max_iter
    _, split = parallel.mesh_shardings(mesh)
    step_fn = compile_step(config, mesh)
    stats: dict = {}
    last: dict = {}
    tick, tick_step = time.perf_counter(), start
    step = start
    batches = prefetch(data, start, max_iter, config.batch, run.process, jax.process_count(),
                       stats=stats)
    for local in batches:
        batch = jax.tree_util.tree_map(
            lambda a: jax.make_array_from_process_local_data(split, a), local)
        state, metrics = step_fn(state, batch)
        step += 1
        done = step == max_iter or stop.is_set()
        values = None
        if step % config.log_every == 0 or done:
            values = run.check_finite(step, metrics)
            seconds = time.perf_counter() - tick
            last = {"step": step, **values,
                    "steps_per_s": (step - tick_step) / max(seconds, 1e-9),
                    "data_wait_fraction": stats.get("wait_seconds", 0.0) / max(seconds, 1e-9)}
            stats["wait_seconds"], tick, tick_step = 0.0, time.perf_counter(), step
            if validation and (step % config.validate_every == 0 or done):
                last |= _validation_metrics(parallel.local_copy(state["params"]), config,
                                            validation)
            run.log(last, done)
            if on_log:
                on_log(last)
        if step % config.checkpoint_every == 0 or done or stop.is_set():
            if values is None:  # never save parameters that are not finite
                run.check_finite(step, metrics)
            run.save(step, state)  # stop may have been set by on_log or a signal since `done`
        if stop.is_set():
            break
    batches.close()
    return state, step, last


def _continues(saved: TrainConfig, config: TrainConfig) -> bool:
    """Whether ``config`` resumes the run that ``saved`` started: the same settings, save
    ``max_iter``, so that a finished run can be trained on. Each step's batch and learning
    rate depend on the step alone, so the longer run equals one started with the larger
    ``max_iter``."""
    schedule = dataclasses.replace(saved.schedule, max_iter=config.schedule.max_iter)
    return dataclasses.replace(saved, schedule=schedule) == config


def _trained_scales(scales: Sequence | None) -> list | None:
    """The model folder's ``trained_scales``: each isotropic scale as a number, each
    anisotropic (x, y, z) one as a list, each once in order (see
    ``checkpoint.untrained_scale``)."""
    if not scales:
        return None
    entries = []
    for s in scales:
        factors = tuple(float(f) for f in (s if isinstance(s, tuple | list) else (s,)))
        entry = factors[0] if len(set(factors)) == 1 else list(factors)
        if entry not in entries:
            entries.append(entry)
    return entries


def _forget_later_logs(log_file: Path, curves: Path, step: int) -> None:
    """Keep the lines of ``log_file`` up to ``step`` (where the run starts or resumes): later
    ones, every one on a fresh start, are of an attempt whose checkpoints were not kept,
    and their steps are logged again. With no line left, ``curves`` goes too."""
    if not log_file.exists():
        return
    lines = log_file.read_text(encoding="utf-8").splitlines(keepends=True)

    def logged_step(line: str) -> float:
        try:
            return float(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            return float("inf")  # a line cut short by a kill

    kept = [line for line in lines if logged_step(line) <= step]
    if kept != lines:
        write_text_atomic(log_file, "".join(kept))
    if not kept:
        curves.unlink(missing_ok=True)


def open_data(paths: Sequence[Path], config: TrainConfig) -> PatchSet | RandomPatches:
    """HDF5 patch sets (or list files naming them), else HR images to cut random patches
    from on the fly (``config.patch``, ``config.patch_scales`` and
    ``patch_scales_by_file``, ``config.blur``, ``config.augment``, ``config.seed``)."""
    if all(p.name.endswith((".h5", ".hdf5")) or is_list_file(p) for p in paths):
        return PatchSet(paths)
    own_scales = config.scales_for(paths)
    volumes, spacings = zip(*(read_volume_spacing(path, "training image") for path in paths))
    return RandomPatches(volumes, config.patch_scales, config.patch, seed=config.seed,
                         blur=config.blur, augment=config.augment,
                         spacing=common_spacing(spacings),
                         volume_scales=own_scales,
                         names=[f"training image {p}" for p in paths])


def common_spacing(spacings: Sequence[Sequence[float]]) -> float | None:
    """The one isotropic voxel size (mm) of all ``spacings`` (to 0.1%), else None: a model
    folder's ``trained_spacing`` is one number, recorded only when it is true of every
    training volume."""
    values = np.asarray(spacings, float)
    if values.size == 0 or not np.allclose(values, values.flat[0], rtol=1e-3, atol=0):
        return None
    return float(round(values.flat[0], 6))


def train_files(data: Sequence[Path], run_dir: Path, *, config_file: Path | None = None,
                caffe_solver: Path | None = None, overrides: Sequence[str] = (),
                init: Path | None = None, validation: Sequence[Path] = (),
                stop: threading.Event | None = None,
                on_start: Callable[[TrainConfig], None] | None = None,
                on_log: Callable[[dict], None] | None = None) -> tuple[dict, TrainConfig]:
    """``train`` from files: resolve the settings (``settings.resolve``), load the init model,
    the held-out images and the data, and train. ``on_start`` receives the settings
    before the first step. Returns the last logged metrics and the settings."""
    init_model = load_model(init) if init else None
    config = resolve(run_dir, config_file, caffe_solver, overrides,
                     init_model.config if init_model else None)
    held_out = [read_volume(path, "validation image") for path in validation]
    for path, volume in zip(validation, held_out):
        check_degradable(volume.shape, config.validation_scale, f"{path}: validation image",
                         "validation_scale")
    patches = open_data(data, config)
    try:
        if on_start:
            on_start(config)
        last = train(config, patches, run_dir, init_model, stop, on_log, held_out)
    finally:
        patches.close()
    return last, config
