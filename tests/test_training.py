"""Training: the original's solver (pipeline doc §4), the loop, checkpoints, resume, data.

Every run uses one tiny architecture (3 layers, 8 filters, 3^3 kernels) so that
the parameter initialisation compiles once per process, batches of 8 (the
conftest forces 2 CPU devices: training is data-parallel over them), and one
real patch set: 9^3 patches (stride 4) of a crop of nibabel's 2 mm T1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import crop, package_file, write

from srrecnn_jax import cli, model
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.config import recnn
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.train import loop as trainer
from srrecnn_jax.train.config import TrainConfig, config_from
from srrecnn_jax.train.data import PatchSet
from srrecnn_jax.train.settings import from_caffe_solver, read_run_config
from srrecnn_jax.train.step import (
    compile_step,
    init_state,
    learning_rate_schedule,
    loss_value,
    micro_batches,
)

LAYERS, FILTERS, BATCH = 3, 8, 8
SUBPROCESS_TIMEOUT_S = 120


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def patches_h5(tmp_path_factory) -> Path:
    """HDF5 patches of a 26 x 34 x 25 crop of the real T1: 96 patches of 9^3, seed-0 shuffle."""
    root = tmp_path_factory.mktemp("patches")
    t1 = sitk.ReadImage(str(package_file("nibabel", "tests/data/anatomical.nii")))
    t1_path = root / "t1.nii.gz"
    sitk.WriteImage(crop(t1, (4, 4, 0), (26, 34, 25)), str(t1_path))
    h5 = root / "patches.h5"
    assert cli.main(["make-patches", "-f", str(t1_path), "-o", str(h5), "--patch", "9",
                     "--stride", "4", "--border", "2,2,0", "--quiet"]) == 0
    return h5


@pytest.fixture(scope="module")
def patch_set(patches_h5: Path) -> Iterator[PatchSet]:
    patches = PatchSet([patches_h5])
    yield patches
    patches.close()


def small_config(**overrides) -> TrainConfig:
    """The tiny architecture and batch, original solver defaults unless overridden."""
    values = {"layers": LAYERS, "filters": FILTERS, "batch": BATCH, **overrides}
    return config_from(values)


def small_settings(**overrides) -> list[str]:
    """``--set`` options for the tiny architecture and batch, plus ``overrides``."""
    values = {"layers": LAYERS, "filters": FILTERS, "batch": BATCH, **overrides}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def train_cli(data: Path, run: Path, *options: str) -> int:
    return cli.main(["train", str(data), "--out-dir", str(run), "--quiet", *options])


def one_error_line(capsys) -> str:
    """stderr must be exactly one ``srrecnn: error:`` line; return it."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("srrecnn: error:"), lines
    return lines[0]


def to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def assert_trees_equal(actual, expected) -> None:
    """Same structure and bitwise-equal leaves."""
    actual_leaves, actual_def = jax.tree_util.tree_flatten_with_path(to_numpy(actual))
    expected_leaves, expected_def = jax.tree_util.tree_flatten_with_path(to_numpy(expected))
    assert actual_def == expected_def
    for (path, a), (_, b) in zip(actual_leaves, expected_leaves):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def numpy_params(layers: int, filters: int, seed: int) -> dict:
    """Random float32 parameters of ``recnn(layers, filters)`` (NumPy: nothing to compile)."""
    rng = np.random.default_rng(seed)
    return {layer: {leaf: rng.normal(0.0, 0.1, shape).astype(np.float32)
                    for leaf, shape in leaves.items()}
            for layer, leaves in model.param_shapes(recnn(layers, filters)).items()}


def euclidean(prediction, label):
    """Caffe's EuclideanLoss, written out: sum of squares / (2 batch)."""
    return jnp.sum((prediction - label) ** 2) / (2 * prediction.shape[0])


def grads_of(params, batch, config: TrainConfig):
    """The gradient ``train_step`` takes: through the network run as there."""
    def objective(p):
        return euclidean(model.apply(p, batch["data"], config.model, algorithm="exact",
                                     differentiable=True), batch["label"])
    return to_numpy(jax.jit(jax.grad(objective))(params))


def hdf5_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a patch file, channels-last."""
    with h5py.File(path, "r") as f:
        return (f["data"][:].transpose(0, 2, 3, 4, 1), f["label"][:].transpose(0, 2, 3, 4, 1))


SOLVER = """\
net: "SRReCNN3D_net.prototxt"
type: "Adam"
base_lr: 0.0005
momentum: 0.9
momentum2: 0.99
delta: 1e-8
lr_policy: "multistep"
gamma: 0.5
stepvalue: 300
stepvalue: 600
max_iter: 900
snapshot: 100
snapshot_prefix: "snapshots/SRReCNN3D"
weight_decay: 0.0001
display: 10
solver_mode: GPU
"""


# --- 1. learning-rate schedule ----------------------------------------------------------


def test_schedule_multiplies_by_gamma_from_the_stepvalue_on():
    """Caffe multistep: update index 9999 still has base_lr, 10000 (iter >= stepvalue) has
    base_lr * gamma (float32: to 1e-6 relative)."""
    schedule = learning_rate_schedule(config_from(dict(learning_rate=1e-3, gamma=0.1,
                                                              steps=(10000,))))
    assert float(schedule(0)) == pytest.approx(1e-3, rel=1e-6)
    assert float(schedule(9999)) == pytest.approx(1e-3, rel=1e-6)
    assert float(schedule(10000)) == pytest.approx(1e-4, rel=1e-6)
    assert float(schedule(19999)) == pytest.approx(1e-4, rel=1e-6)


def test_schedule_with_two_stepvalues_reaches_gamma_squared():
    """stepvalues 100 and 200: base_lr before 100, x gamma on [100, 200), x gamma^2 from 200."""
    schedule = learning_rate_schedule(config_from(dict(learning_rate=1e-3, gamma=0.1,
                                                        steps=(100, 200))))
    expected = {0: 1e-3, 99: 1e-3, 100: 1e-4, 199: 1e-4, 200: 1e-5, 10**6: 1e-5}
    for update, rate in expected.items():
        assert float(schedule(update)) == pytest.approx(rate, rel=1e-6), update


def test_schedule_without_steps_is_constant():
    """``steps=()`` (Caffe "fixed"): base_lr at every update, exactly."""
    schedule = learning_rate_schedule(config_from(dict(learning_rate=5e-4, steps=())))
    for update in (0, 1, 10000, 10**7):
        assert float(schedule(update)) == np.float32(5e-4)


# --- 2. bias learning-rate multiplier ----------------------------------------------------


def test_sgd_step_is_minus_lr_grad_and_tenth_of_it_on_biases(patch_set):
    """SGD, momentum 0, lr 0.1: one ``train_step`` moves kernels by -lr * grad (to 1e-6 of the
    layer's largest update) and biases by -lr * 0.1 * grad (1e-6 relative per entry)."""
    config = small_config(solver="sgd", momentum=0.0, learning_rate=0.1, steps=())
    batch = patch_set.batch(0, BATCH)
    state = init_state(jax.random.PRNGKey(0), config)
    before = to_numpy(state["params"])
    grads = grads_of(state["params"], batch, config)
    after = to_numpy(compile_step(config)(state, batch)[0]["params"])
    for layer in before:
        delta = after[layer]["kernel"].astype(np.float64) - before[layer]["kernel"]
        expected = -0.1 * grads[layer]["kernel"].astype(np.float64)
        assert np.abs(delta - expected).max() <= 1e-6 * np.abs(expected).max(), layer
        delta = after[layer]["bias"].astype(np.float64) - before[layer]["bias"]
        np.testing.assert_allclose(delta, -0.1 * 0.1 * grads[layer]["bias"], rtol=1e-6,
                                   err_msg=layer)


def test_adam_bias_update_scales_with_bias_lr_mult(patch_set):
    """First Adam step: the bias deltas with ``bias_lr_mult=0.1`` are 0.1 x those with 1
    (1e-5 relative); the kernel deltas do not depend on it (bitwise)."""
    batch = patch_set.batch(0, BATCH)
    results = {}
    for mult in (1.0, 0.1):
        config = small_config(bias_lr_mult=mult)
        state = init_state(jax.random.PRNGKey(0), config)
        results[mult] = to_numpy(compile_step(config)(state, batch)[0]["params"])
    before = to_numpy(init_state(jax.random.PRNGKey(0), small_config())["params"])
    for layer in before:
        full = results[1.0][layer]["bias"] - before[layer]["bias"]
        tenth = results[0.1][layer]["bias"] - before[layer]["bias"]
        assert np.abs(full).max() > 0, layer
        np.testing.assert_allclose(tenth, 0.1 * full, rtol=1e-5, atol=0, err_msg=layer)
        np.testing.assert_array_equal(results[0.1][layer]["kernel"],
                                      results[1.0][layer]["kernel"], err_msg=layer)


# --- 3. loss ---------------------------------------------------------------------------


def test_euclidean_loss_is_sum_of_squares_over_twice_the_batch():
    """Caffe EuclideanLoss: sum((p - l)^2) / (2 B), hand-computed in float64 (1e-6 rel)."""
    rng = np.random.default_rng(1)
    prediction = rng.normal(size=(4, 3, 3, 3, 1)).astype(np.float32)
    label = rng.normal(size=(4, 3, 3, 3, 1)).astype(np.float32)
    expected = np.sum((prediction.astype(np.float64) - label) ** 2) / (2 * 4)
    assert float(loss_value(prediction, label, "euclidean")) == pytest.approx(expected, rel=1e-6)


def test_mean_loss_is_the_mean_squared_error():
    """``loss="mean"``: mean((p - l)^2) over every voxel of the batch (1e-6 rel)."""
    rng = np.random.default_rng(2)
    prediction = rng.normal(size=(4, 3, 3, 3, 1)).astype(np.float32)
    label = rng.normal(size=(4, 3, 3, 3, 1)).astype(np.float32)
    expected = np.mean((prediction.astype(np.float64) - label) ** 2)
    assert float(loss_value(prediction, label, "mean")) == pytest.approx(expected, rel=1e-6)


# --- 4. Caffe solver import -------------------------------------------------------------


def test_caffe_adam_solver_maps_every_field(tmp_path):
    """An Adam multistep solver.prototxt sets solver, rates, betas, delta, schedule, decay,
    max_iter, snapshot and display; the rest keeps the defaults."""
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER)
    config = from_caffe_solver(path)
    assert config.optimizer.solver == "adam"
    assert config.optimizer.learning_rate == 0.0005
    assert config.optimizer.beta1 == 0.9
    assert config.optimizer.beta2 == 0.99
    assert config.optimizer.epsilon == 1e-8
    assert config.schedule.gamma == 0.5
    assert config.schedule.steps == (300, 600)
    assert config.schedule.max_iter == 900 and isinstance(config.schedule.max_iter, int)
    assert config.checkpoint_every == 100 and isinstance(config.checkpoint_every, int)
    assert config.optimizer.weight_decay == 0.0001
    assert config.log_every == 10 and isinstance(config.log_every, int)
    defaults = TrainConfig()
    assert (config.model, config.batch, config.optimizer.momentum,
            config.optimizer.bias_lr_mult, config.loss) == (
                defaults.model, defaults.batch, defaults.optimizer.momentum,
                defaults.optimizer.bias_lr_mult, defaults.loss)


def test_caffe_old_style_sgd_fixed_solver(tmp_path):
    """``solver_type: SGD`` (old Caffe) with ``lr_policy: "fixed"``: sgd, momentum from
    ``momentum`` (not beta1), no steps."""
    path = tmp_path / "solver.prototxt"
    path.write_text('solver_type: SGD\nbase_lr: 0.01\nmomentum: 0.95\nlr_policy: "fixed"\n'
                    "max_iter: 500\n")
    config = from_caffe_solver(path)
    assert config.optimizer.solver == "sgd"
    assert config.optimizer.learning_rate == 0.01
    assert config.optimizer.momentum == 0.95
    assert config.optimizer.beta1 == TrainConfig().optimizer.beta1
    assert config.schedule.steps == ()
    assert config.schedule.max_iter == 500


def test_caffe_solver_with_unsupported_lr_policy_names_the_file(tmp_path):
    """``lr_policy: "poly"`` raises SrrecnnError naming the file and the policy."""
    path = tmp_path / "poly_solver.prototxt"
    path.write_text(SOLVER.replace('"multistep"', '"poly"'))
    with pytest.raises(SrrecnnError, match="poly") as info:
        from_caffe_solver(path)
    assert str(path) in str(info.value)


# --- 5. settings precedence through the CLI ---------------------------------------------


def test_cli_settings_precedence_solver_then_config_then_set(patches_h5, tmp_path):
    """--from-caffe-solver < --config (TOML) < --set, as saved in RUN/train_config.json."""
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER)
    toml = tmp_path / "settings.toml"
    toml.write_text(f"gamma = 0.2\nmax_iter = 50\nlayers = {LAYERS}\nfilters = {FILTERS}\n"
                    f"batch = {BATCH}\n")
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, "--from-caffe-solver", str(solver), "--config", str(toml),
                     "--set", "max_iter=0") == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["learning_rate"] == 0.0005  # solver only
    assert saved["steps"] == [300, 600]  # solver only
    assert saved["gamma"] == 0.2  # config beats solver (0.5)
    assert saved["max_iter"] == 0  # --set beats config (50) and solver (900)
    assert (saved["model"], saved["batch"]) == (recnn(LAYERS, FILTERS).to_dict(), BATCH)


def test_cli_unknown_set_key_is_one_error_line(patches_h5, tmp_path, capsys):
    """``--set no_such_setting=1``: exit 1, one error line naming the key, no run folder."""
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, "--set", "no_such_setting=1") == 1
    assert "no_such_setting" in one_error_line(capsys)
    assert not run.exists()


def test_cli_set_parses_a_list(patches_h5, tmp_path):
    """``--set steps=[5,10]`` is read as TOML: the saved steps are [5, 10]."""
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, *small_settings(max_iter=0), "--set", "steps=[5,10]") == 0
    assert json.loads((run / "train_config.json").read_text())["steps"] == [5, 10]


# --- 6. the loss falls; the run's models feed `srrecnn sr` ------------------------------


@pytest.fixture(scope="module")
def trained_run(patches_h5, tmp_path_factory) -> Path:
    """60 Adam steps of the tiny net on the real patches, logged every 10."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train_cli(patches_h5, run, *small_settings(max_iter=60, log_every=10)) == 0
    return run


def test_loss_falls_on_real_patches(trained_run):
    """The last logged loss (step 60) is below 0.7 x the first (step 10)."""
    logged = [json.loads(ln) for ln in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [10, 20, 30, 40, 50, 60]
    assert all(np.isfinite(m["loss"]) for m in logged)
    assert logged[-1]["loss"] < 0.7 * logged[0]["loss"]


def test_trained_model_loads_with_the_run_architecture(trained_run):
    """RUN/model is a model folder of the configured architecture, equal to the last
    checkpoint's parameters (bitwise)."""
    loaded = load_model(trained_run / "model")
    assert loaded.config == recnn(LAYERS, FILTERS)
    state, _ = trainer.restore_state(trained_run)
    assert int(state["step"]) == 60
    assert_trees_equal(loaded.params, state["params"])


def test_sr_runs_with_model_run_and_checkpoint_folders(trained_run, tmp_path):
    """``srrecnn sr -m`` takes RUN/model, RUN (latest checkpoint) and RUN/checkpoints/60;
    all three name the same parameters, so the outputs are identical."""
    rng = np.random.default_rng(3)
    image = write(rng.uniform(10.0, 100.0, (8, 7, 6)).astype(np.float32), tmp_path / "lr.nii.gz")
    outputs = []
    for i, source in enumerate((trained_run / "model", trained_run,
                                trained_run / "checkpoints" / "60")):
        output = tmp_path / f"sr{i}.nii.gz"
        assert cli.main(["sr", str(image), "-o", str(output), "-m", str(source), "-s", "2"]) == 0
        outputs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(output))))
    assert outputs[0].shape == (12, 14, 16)  # (z, y, x) of 2 x (8, 7, 6)
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_array_equal(outputs[2], outputs[0])


# --- 7. resume after a clean stop -------------------------------------------------------


RESUME = {"log_every": 4, "checkpoint_every": 8, "max_iter": 24}


@pytest.fixture(scope="module")
def uninterrupted_state(patch_set, tmp_path_factory):
    """The final state of a 24-step run without a stop."""
    run = tmp_path_factory.mktemp("straight") / "run"
    trainer.train(small_config(**RESUME), patch_set, run)
    state, _ = trainer.restore_state(run)
    return to_numpy(state)


def assert_state_equal(run: Path, uninterrupted_state: dict) -> None:
    """The run's last checkpoint is at step 24 and equals the uninterrupted run's bitwise."""
    state, _ = trainer.restore_state(run)
    assert int(state["step"]) == 24
    assert_trees_equal(state["params"], uninterrupted_state["params"])
    assert_trees_equal(state["opt_state"], uninterrupted_state["opt_state"])


def stop_at_step_12(patch_set, run: Path) -> None:
    stop = threading.Event()

    def on_log(metrics: dict) -> None:
        if metrics["step"] >= 12:
            stop.set()

    trainer.train(small_config(**RESUME), patch_set, run, stop=stop, on_log=on_log)
    assert not (run / "model").exists()


def test_resume_after_stop_equals_an_uninterrupted_run(patch_set, tmp_path, uninterrupted_state):
    """Stopped at step 12 from the log callback, then trained again to 24: params, optimizer
    state and step equal an uninterrupted run's bitwise (CPU)."""
    run = tmp_path / "run"
    stop_at_step_12(patch_set, run)
    trainer.train(small_config(**RESUME), patch_set, run)
    assert_state_equal(run, uninterrupted_state)


def test_stop_saves_a_checkpoint_at_the_current_step(patch_set, tmp_path):
    """``stop`` set at step 12 (from on_log): the run returns with a checkpoint at step 12,
    as train's docstring promises ("saves a checkpoint at the current step")."""
    run = tmp_path / "run"
    stop_at_step_12(patch_set, run)
    state, _ = trainer.restore_state(run)
    assert int(state["step"]) == 12


def finished_at_step_12(patch_set, run: Path) -> None:
    trainer.train(small_config(**{**RESUME, "max_iter": 12}), patch_set, run)
    assert (run / "model").exists()


def test_a_finished_run_trains_on_to_a_larger_max_iter(patch_set, tmp_path,
                                                        uninterrupted_state):
    """A run finished at max_iter 12, trained again with max_iter 24: the state equals an
    uninterrupted 24-step run's bitwise (CPU), and the run folder records 24."""
    run = tmp_path / "run"
    finished_at_step_12(patch_set, run)
    trainer.train(small_config(**RESUME), patch_set, run)
    assert_state_equal(run, uninterrupted_state)
    assert read_run_config(run).schedule.max_iter == 24


def test_a_rerun_with_other_settings_is_refused(patch_set, tmp_path):
    """Another learning rate on a started run: one error naming the folder; the saved
    settings are kept."""
    run = tmp_path / "run"
    finished_at_step_12(patch_set, run)
    with pytest.raises(SrrecnnError, match=re.escape(f"{run}: holds a run with other settings")):
        trainer.train(small_config(**RESUME, learning_rate=3e-4), patch_set, run)
    assert read_run_config(run).schedule.max_iter == 12


def test_a_max_iter_below_the_runs_step_is_refused(patch_set, tmp_path):
    """max_iter 8 on a run at step 12: an error naming max_iter and the step reached; the
    saved settings are kept."""
    run = tmp_path / "run"
    finished_at_step_12(patch_set, run)
    with pytest.raises(SrrecnnError, match=r"max_iter: 8 is below .* reached \(12\)"):
        trainer.train(small_config(**{**RESUME, "max_iter": 8}), patch_set, run)
    assert read_run_config(run).schedule.max_iter == 12


# --- 8. resume after kill -9 ------------------------------------------------------------


def kill_command(data: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "srrecnn_jax.cli", "train", str(data), "--out-dir", str(run),
            "--quiet", *small_settings(max_iter=40, checkpoint_every=5, log_every=5)]


def finished_steps(run: Path) -> list[int]:
    """Steps of finished orbax checkpoints (integer folder names; temporaries ignored)."""
    folder = run / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


@pytest.mark.slow
def test_resume_after_kill_equals_an_uninterrupted_run(patches_h5, tmp_path):
    """A run SIGKILLed once its step-10 checkpoint exists, rerun with the same command,
    ends bitwise equal (params and optimizer state) to an uninterrupted run."""
    # A persistent compilation cache keeps the three processes' start-up short.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(kill_command(patches_h5, straight), env=env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen(kill_command(patches_h5, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not any(s >= 10 for s in finished_steps(killed)):
            assert proc.poll() is None, "the run ended before its step-10 checkpoint was seen"
            assert time.monotonic() < deadline, "no step-10 checkpoint in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()
    assert max(finished_steps(killed)) < 40

    rerun = subprocess.run(kill_command(patches_h5, killed), env=env, capture_output=True,
                           text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr
    resumed, _ = trainer.restore_state(killed)
    expected, _ = trainer.restore_state(straight)
    assert int(resumed["step"]) == 40
    assert_trees_equal(resumed["params"], expected["params"])
    assert_trees_equal(resumed["opt_state"], expected["opt_state"])
    assert_trees_equal(load_model(killed / "model").params, load_model(straight / "model").params)


# --- 9. data parallel -------------------------------------------------------------------


def test_two_device_step_equals_one_device_step(patch_set):
    """``compile_step`` over a 2-device ``data`` mesh gives the params of the single-device
    step after 3 steps on the same batches, to 1e-5 relative (sum order differs)."""
    if len(jax.devices()) < 2:
        pytest.skip("needs two devices (tests/conftest.py forces two CPU devices)")
    config = small_config()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    single = init_state(jax.random.PRNGKey(0), config)
    sharded = jax.device_put(init_state(jax.random.PRNGKey(0), config), replicated)
    single_step, sharded_step = compile_step(config, None), compile_step(config, mesh)
    for step in range(3):
        batch = patch_set.batch(step, BATCH)
        single, _ = single_step(single, batch)
        sharded, _ = sharded_step(sharded, jax.device_put(batch, split))
    assert sharded["params"]["conv1"]["kernel"].sharding.is_fully_replicated
    flat_single = jax.tree_util.tree_leaves_with_path(to_numpy(single["params"]))
    flat_sharded = jax.tree_util.tree_leaves(to_numpy(sharded["params"]))
    for (path, a), b in zip(flat_single, flat_sharded):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_micro_batched_step_equals_the_whole_batch_step(patch_set):
    """``micro_batch`` 2 (the gradient summed over two halves of the batch) gives the
    whole batch's loss and, after 3 steps, its params, to 1e-5 relative (sum order
    differs)."""
    whole, micro = small_config(micro_batch=BATCH), small_config(micro_batch=BATCH // 2)
    assert (micro_batches(whole), micro_batches(micro)) == (1, 2)
    states = [init_state(jax.random.PRNGKey(0), c) for c in (whole, micro)]
    steps = [compile_step(c, None) for c in (whole, micro)]
    for step in range(3):
        batch = patch_set.batch(step, BATCH)
        (states[0], m0), (states[1], m1) = (f(s, batch) for f, s in zip(steps, states))
        np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(to_numpy(states[0]["params"])),
                    jax.tree_util.tree_leaves(to_numpy(states[1]["params"]))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_micro_batched_step_on_two_devices_equals_one_device(patch_set):
    """Micro-batches of a batch split over a 2-device mesh (items k, k + n, ... each):
    the single-device micro-batched step's params after 2 steps, to 1e-5 relative."""
    if len(jax.devices()) < 2:
        pytest.skip("needs two devices (tests/conftest.py forces two CPU devices)")
    config = small_config(micro_batch=BATCH // 2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    single = init_state(jax.random.PRNGKey(0), config)
    sharded = jax.device_put(init_state(jax.random.PRNGKey(0), config), replicated)
    single_step, sharded_step = compile_step(config, None), compile_step(config, mesh)
    for step in range(2):
        batch = patch_set.batch(step, BATCH)
        single, _ = single_step(single, batch)
        sharded, _ = sharded_step(sharded, jax.device_put(batch, split))
    for a, b in zip(jax.tree_util.tree_leaves(to_numpy(single["params"])),
                    jax.tree_util.tree_leaves(to_numpy(sharded["params"]))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_automatic_micro_batches_are_16_patches_on_cpu():
    """``micro_batch = 0``: 16 patches each on CPU where 16 divides the batch, else one."""
    if jax.default_backend() != "cpu":
        pytest.skip("the automatic size is the CPU's")
    assert micro_batches(config_from({"batch": 64})) == 4
    assert micro_batches(config_from({"batch": 16})) == 1
    assert micro_batches(config_from({"batch": 24})) == 1


# --- 10. the data pipeline --------------------------------------------------------------


def test_batch_is_rows_of_the_step_modulo_n(patches_h5, patch_set):
    """``batch(step, B)`` holds rows [step B, step B + B) mod N, channels-last, wrapping."""
    data, label = hdf5_rows(patches_h5)
    n = len(patch_set)
    assert n == data.shape[0] == 96
    for step, size in ((0, 8), (3, 8), (9, 10), (25, 8)):  # (9, 10): rows 90..95, 0..3
        rows = (step * size + np.arange(size)) % n
        batch = patch_set.batch(step, size)
        assert batch["data"].shape == (size, 9, 9, 9, 1)
        np.testing.assert_array_equal(batch["data"], data[rows])
        np.testing.assert_array_equal(batch["label"], label[rows])


def test_process_shares_concatenate_to_the_global_batch(patch_set):
    """Processes 0 and 1 of 2 read halves that concatenate to the global batch (wrap too)."""
    for step in (0, 11):
        whole = patch_set.batch(step, 8)
        shares = [patch_set.batch(step, 8, process=p, processes=2) for p in (0, 1)]
        for key in ("data", "label"):
            assert shares[0][key].shape[0] == 4
            np.testing.assert_array_equal(
                np.concatenate([shares[0][key], shares[1][key]]), whole[key])


def test_train_list_of_two_files_reads_as_their_concatenation(patches_h5, tmp_path):
    """A train.txt listing two HDF5 files (relative names) reads as rows of file 1 then
    file 2, and the batch crossing their boundary mixes both."""
    rng = np.random.default_rng(4)
    second = tmp_path / "second.h5"
    with h5py.File(second, "w") as f:
        f["data"] = rng.normal(size=(13, 1, 9, 9, 9)).astype(np.float32)
        f["label"] = rng.normal(size=(13, 1, 9, 9, 9)).astype(np.float32)
    (tmp_path / "first.h5").symlink_to(patches_h5)
    listing = tmp_path / "train.txt"
    listing.write_text("first.h5\n\nsecond.h5\n")
    first_data, first_label = hdf5_rows(patches_h5)
    second_data, second_label = hdf5_rows(second)
    data = np.concatenate([first_data, second_data])
    label = np.concatenate([first_label, second_label])
    patches = PatchSet([listing])
    try:
        assert len(patches) == 96 + 13
        for step in (0, 9, 10, 11):  # step 9 of 10 crosses the files; step 10 wraps
            rows = (step * 10 + np.arange(10)) % len(patches)
            batch = patches.batch(step, 10)
            np.testing.assert_array_equal(batch["data"], data[rows])
            np.testing.assert_array_equal(batch["label"], label[rows])
    finally:
        patches.close()


# --- 11. fine-tuning --------------------------------------------------------------------


def test_init_with_zero_steps_exports_the_init_params(patches_h5, tmp_path):
    """``--init MODEL --set max_iter=0``: RUN/model holds exactly the init parameters."""
    params = numpy_params(LAYERS, FILTERS, seed=5)
    init = save_model(tmp_path / "init", LoadedModel(params, recnn(LAYERS, FILTERS)))
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, "--init", str(init), *small_settings(max_iter=0)) == 0
    assert_trees_equal(load_model(run / "model").params, params)


def test_init_of_another_architecture_is_one_error_line(patches_h5, tmp_path, capsys):
    """An --init model of 2 layers against settings of 3: exit 1, one error line, no model."""
    init = save_model(tmp_path / "init",
                      LoadedModel(numpy_params(2, FILTERS, seed=6), recnn(2, FILTERS)))
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, "--init", str(init), *small_settings(max_iter=0)) == 1
    assert "--init" in one_error_line(capsys)
    assert not (run / "model").exists()


# --- 12. a run folder keeps its settings -------------------------------------------------


def test_rerun_with_other_settings_is_refused(patches_h5, tmp_path, capsys):
    """A second ``train`` on the same --out with another learning rate: exit 1 naming the
    folder; the saved settings stay."""
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, *small_settings(max_iter=0)) == 0
    capsys.readouterr()
    assert train_cli(patches_h5, run, *small_settings(max_iter=0, learning_rate=0.01)) == 1
    assert str(run) in one_error_line(capsys)
    assert json.loads((run / "train_config.json").read_text())["learning_rate"] == 1e-3


# --- settings the loop divides by -------------------------------------------------------


def test_zero_checkpoint_interval_is_one_error_line(patches_h5, tmp_path, capsys):
    """``--set checkpoint_every=0``: exit 1 with one error line, not a traceback."""
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, *small_settings(max_iter=2, checkpoint_every=0)) == 1
    assert "checkpoint_every" in one_error_line(capsys)


def test_non_finite_step_between_log_steps_saves_no_checkpoint(patches_h5, tmp_path, capsys):
    """Patches of 1e30 (finite, but their squares overflow float32) in the batch of update 4,
    checkpoints every 2 updates, logs every 5: the run stops at step 4 with one error line
    naming the step and the last good checkpoint (2); no checkpoint of step 4 exists and the
    run folder still loads as finite. (A NaN in the file is refused when read, see
    test_safety.)"""
    data, label = hdf5_rows(patches_h5)
    data[3 * BATCH:4 * BATCH] = 1e30  # rows of update 4 (updates count from 1)
    poisoned = tmp_path / "poisoned.h5"
    with h5py.File(poisoned, "w") as f:
        f["data"] = np.ascontiguousarray(data.transpose(0, 4, 1, 2, 3))
        f["label"] = np.ascontiguousarray(label.transpose(0, 4, 1, 2, 3))
    run = tmp_path / "run"
    assert train_cli(poisoned, run, *small_settings(max_iter=6, checkpoint_every=2,
                                                    log_every=5)) == 1
    line = one_error_line(capsys)
    assert "step 4" in line and "not finite" in line and "step 2" in line
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                  if p.name.isdigit()) == [2]
    params = load_model(run).params
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def test_init_from_an_srcnn3d_model_fine_tunes_that_architecture(patches_h5, tmp_path):
    """``--init`` an SRCNN3D (9-1-5, edge padding, no residual) with no architecture set:
    the run trains that architecture (one step) and its model has the same config."""
    from srrecnn_jax.config import ModelConfig

    cfg = ModelConfig(kernels=(9, 1, 5), filters=(8, 4, 1), residual=False,
                      padding="edge_valid")
    rng = np.random.default_rng(7)
    params = {layer: {leaf: (0.05 * rng.standard_normal(shape)).astype(np.float32)
                      for leaf, shape in leaves.items()}
              for layer, leaves in model.param_shapes(cfg).items()}
    init = save_model(tmp_path / "srcnn", LoadedModel(params, cfg))
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, "--init", str(init), "--set", f"batch={BATCH}",
                     "--set", "max_iter=1", "--set", "log_every=1") == 0
    trained = load_model(run / "model")
    assert trained.config == cfg
    assert not np.array_equal(trained.params["conv1"]["kernel"], params["conv1"]["kernel"])


@pytest.mark.parametrize("setting, named", [
    ("layers=1.5", "layers"), ("filters=0", "filters"), ("steps=[a]", "steps"),
    ("learning_rate=-1", "learning_rate"), ("residual=\"false\"", "residual"),
    ("learning_rate=inf", "learning_rate"), ("learning_rate=1e39", "learning_rate"),
    ("gamma=nan", "gamma"), ("epsilon=inf", "epsilon"), ("validation_scale=inf",
                                                         "validation_scale"),
    ("seed=-1", "seed"), ("patch_scales=[]", "patch_scales"),
    ("micro_batch=3", "micro_batch"), ("micro_batch=-1", "micro_batch"),
    ("model={kernels=[3, 3], filters=[2, 1], residual=\"false\"}", "residual"),
    ("model={kernels=[3.0, 3.0], filters=[2, 1]}", "kernels"),
])
def test_bad_setting_is_one_error_line_and_writes_nothing(setting, named, patches_h5,
                                                          tmp_path, capsys):
    """A setting of the wrong type or range (a NaN, an infinity, a learning rate infinite
    in float32, a negative seed, a string where true/false belongs): exit 1, one line
    naming it, no run folder."""
    run = tmp_path / "run"
    assert train_cli(patches_h5, run, *small_settings(max_iter=1), "--set", setting) == 1
    assert named in one_error_line(capsys)
    assert not run.exists()


def test_a_run_in_progress_loads_its_latest_checkpoint_that_reads_whole(patch_set, tmp_path):
    """A run folder without its final model, whose newest checkpoint is being written
    (here: its metadata item not there yet), loads as its newest complete checkpoint
    (``sr -m RUN`` on a run mid-training failed 24 times in 25)."""
    import shutil

    run = tmp_path / "run"
    trainer.train(small_config(max_iter=4, checkpoint_every=2, log_every=2), patch_set, run)
    shutil.rmtree(run / "model")  # as before the run's end
    earlier = load_model(run / "checkpoints" / "2")
    for item in (run / "checkpoints" / "4" / "meta").iterdir():
        item.unlink()  # the newest checkpoint, half written
    loaded = load_model(run)
    assert loaded.origin["step"] == 2
    assert_trees_equal(loaded.params, earlier.params)
