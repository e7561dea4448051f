"""Safety outside batch mode: short writes, racing runs, non-finite numbers, bad settings,
oversized models and outputs, hostile inputs, and interrupts.

Each failure below must end as the CLI promises: one ``srrecnn: error:`` line naming the
file or option, a non-zero exit, no traceback, and nothing left at the output path.
In-process calls of ``cli.main`` unless the process itself (signals, exit) is the point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from srrecnn_jax import cli
from srrecnn_jax.config import MAX_FILTERS, MAX_KERNEL, MAX_LAYERS

LR_SIZE = (8, 7, 6)  # SimpleITK (x, y, z) size of the good input


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def lr_path(tmp_path: Path) -> Path:
    """An 8 x 7 x 6 float32 image of positive random voxels."""
    values = np.random.default_rng(0).uniform(0.1, 1.0, LR_SIZE[::-1]).astype(np.float32)
    path = tmp_path / "in" / "lr.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def sr_args(lr_path: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return ["sr", str(lr_path), "-o", str(output), "-m", str(model), "-s", "2", *extra]


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def one_error_line(capfd) -> str:
    """stderr (file descriptor 2) is exactly one ``srrecnn: error:`` line; return it."""
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("srrecnn: error:"), lines[0]
    return lines[0]


# --- 1. a full disk: short writes of every format are caught --------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd",
                                    ".hdr"])
def test_short_write_is_a_disk_full_error(suffix, lr_path, out_dir, models, capfd,
                                          monkeypatch):
    """A writer that silently leaves its largest file 100 bytes short (as SimpleITK does on a
    full disk): exit 1, one line naming the output and asking about the disk, no file left."""
    write = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        write(image, path, *args, **kwargs)
        data = max(Path(path).parent.iterdir(), key=lambda p: p.stat().st_size)
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size - 100)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    output = out_dir / f"out{suffix}"
    capfd.readouterr()
    assert cli.main(sr_args(lr_path, output, models["mono"])) == 1
    line = one_error_line(capfd)
    assert str(output) in line and "is the disk full?" in line
    assert listing(out_dir) == []


# --- 2. two runs to one output: the second never clobbers the first -------------------


def test_output_made_by_another_run_meanwhile_survives(lr_path, out_dir, models, capfd,
                                                       monkeypatch):
    """Another run writes ``-o`` after our up-front check but before our rename: exit 1 with
    the one "already exists (use --force ...)" line, and its file is left byte for byte."""
    output = out_dir / "out.nii.gz"
    write = sitk.WriteImage

    def write_and_lose_the_race(image, path, *args, **kwargs):
        write(image, path, *args, **kwargs)
        output.write_bytes(b"the other run's result")

    monkeypatch.setattr(sitk, "WriteImage", write_and_lose_the_race)
    capfd.readouterr()
    assert cli.main(sr_args(lr_path, output, models["mono"])) == 1
    line = one_error_line(capfd)
    assert str(output) in line and "already exists (use --force" in line
    assert output.read_bytes() == b"the other run's result"
    assert listing(out_dir) == ["out.nii.gz"]


def test_force_replaces_an_output_made_meanwhile(lr_path, out_dir, models, monkeypatch):
    """With ``--force`` the same race ends with our image in place (replacing is asked for)."""
    output = out_dir / "out.nii.gz"
    write = sitk.WriteImage

    def write_and_lose_the_race(image, path, *args, **kwargs):
        write(image, path, *args, **kwargs)
        output.write_bytes(b"the other run's result")

    monkeypatch.setattr(sitk, "WriteImage", write_and_lose_the_race)
    assert cli.main(sr_args(lr_path, output, models["mono"], "--force")) == 0
    assert sitk.ReadImage(str(output)).GetSize() == tuple(2 * n for n in LR_SIZE)
    assert listing(out_dir) == ["out.nii.gz"]


def small_image() -> sitk.Image:
    return sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))


def test_no_replace_of_a_taken_header_takes_back_its_data_file(out_dir):
    """``write_image_atomic(replace=False)`` to ``out.mhd`` when ``out.mhd`` exists but
    ``out.raw`` does not: OutputExistsError, ``out.mhd`` untouched, and the ``out.raw``
    it had already put in place removed again (nothing of ours is left)."""
    from srrecnn_jax.errors import OutputExistsError
    from srrecnn_jax.writing import write_image_atomic

    header = out_dir / "out.mhd"
    header.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_image_atomic(small_image(), header, replace=False)
    assert header.read_bytes() == b"precious"
    assert listing(out_dir) == ["out.mhd"]


def test_no_replace_without_hard_links_still_refuses_a_taken_name(out_dir, monkeypatch):
    """Where hard links are unsupported (``os.link`` fails with EPERM), ``replace=False``
    still writes a free name and still refuses a taken one, leaving it untouched."""
    import errno

    from srrecnn_jax.errors import OutputExistsError
    from srrecnn_jax.writing import write_image_atomic

    def no_links(source, target, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    free, taken = out_dir / "free.nrrd", out_dir / "taken.nrrd"
    taken.write_bytes(b"precious")
    write_image_atomic(small_image(), free, replace=False)
    assert sitk.ReadImage(str(free)).GetSize() == (5, 4, 3)
    with pytest.raises(OutputExistsError):
        write_image_atomic(small_image(), taken, replace=False)
    assert taken.read_bytes() == b"precious"
    assert listing(out_dir) == ["free.nrrd", "taken.nrrd"]


# --- 3. NaN never becomes a model, and never an output ----------------------------------


def patch_file(path: Path, rows: int = 16, patch: int = 5, label_patch: int | None = None,
               poison: tuple[str, int] | None = None) -> Path:
    """An HDF5 patch set of random rows; ``poison=("data", i)`` puts a NaN in that row."""
    import h5py

    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (rows, 1, patch, patch, patch)).astype(np.float32)
    lp = label_patch or patch
    label = rng.uniform(0, 1, (rows, 1, lp, lp, lp)).astype(np.float32)
    if poison:
        {"data": data, "label": label}[poison[0]][poison[1], 0, 1, 2, 3] = np.nan
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, label
    return path


TINY_RUN = ["--set", "layers=2", "--set", "filters=2", "--set", "batch=2", "--set", "max_iter=8",
            "--set", "log_every=1", "--set", "checkpoint_every=1"]


@pytest.mark.parametrize("dataset", ["data", "label"])
def test_nan_in_a_patch_file_names_the_file_and_the_row(dataset, tmp_path, capfd):
    """A NaN in row 5 of an HDF5 patch set stops training with one line naming the file
    and ``data[5]`` (or ``label[5]``); no model is written and every checkpoint kept is
    of a step before that row's batch (rows 4-5 are the batch of step 3)."""
    h5 = patch_file(tmp_path / "poisoned.h5", poison=(dataset, 5))
    run = tmp_path / "run"
    capfd.readouterr()
    assert cli.main(["train", str(h5), "--out-dir", str(run), "--quiet", *TINY_RUN]) == 1
    line = one_error_line(capfd)
    assert str(h5) in line and f"{dataset}[5]" in line
    assert not (run / "model").exists()
    assert max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) <= 2


def save_unchecked(folder: Path, params: dict, monkeypatch) -> Path:
    """A model folder of ``params`` as written without the finiteness check."""
    from srrecnn_jax import checkpoint, config

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "check_finite", lambda params, name: None)
        return checkpoint.save_model(folder, checkpoint.LoadedModel(params, config.tiny()))


def tiny_params(scale: float = 1.0) -> dict:
    from srrecnn_jax import config, model

    rng = np.random.default_rng(1)
    return {layer: {leaf: (scale * rng.normal(0, 0.3, shape)).astype(np.float32)
                    for leaf, shape in leaves.items()}
            for layer, leaves in model.param_shapes(config.tiny()).items()}


def test_model_folder_with_a_nan_parameter_is_refused(tmp_path, capfd, monkeypatch):
    """``info`` on a model folder holding a NaN: exit 1, one line naming the folder and the
    parameter."""
    params = tiny_params()
    params["conv2"]["kernel"][0, 0, 0, 0, 0] = np.nan
    folder = save_unchecked(tmp_path / "nan_model", params, monkeypatch)
    capfd.readouterr()
    assert cli.main(["info", str(folder)]) == 1
    line = one_error_line(capfd)
    assert str(folder) in line and "conv2.kernel" in line and "not finite" in line


def test_caffemodel_with_an_infinite_weight_is_refused(tmp_path, capfd):
    """``info`` on a caffemodel holding an infinite bias: exit 1, one line naming the file."""
    from srrecnn_jax import caffe, config

    params = tiny_params()
    params["conv1"]["bias"][1] = np.inf
    path = tmp_path / "inf.caffemodel"
    path.write_bytes(caffe.caffemodel_bytes(params, config.tiny()))
    capfd.readouterr()
    assert cli.main(["info", str(path)]) == 1
    line = one_error_line(capfd)
    assert str(path) in line and "conv1.bias" in line and "not finite" in line


def test_result_that_overflows_is_an_error_not_an_output(lr_path, out_dir, tmp_path, capfd,
                                                         monkeypatch):
    """Finite weights of 1e30 overflow float32 on a normal input: exit 1, one line naming the
    input and the non-finite voxels, no output."""
    from srrecnn_jax import checkpoint, config

    folder = checkpoint.save_model(tmp_path / "huge",
                                   checkpoint.LoadedModel(tiny_params(1e30), config.tiny()))
    capfd.readouterr()
    assert cli.main(sr_args(lr_path, out_dir / "out.nii.gz", folder)) == 1
    line = one_error_line(capfd)
    assert str(lr_path) in line and "non-finite" in line
    assert listing(out_dir) == []


# --- 4. a model folder's config.json is checked, key by key, before orbax reads ---------


def edited_model(source: Path, folder: Path, edit) -> Path:
    """A copy of the model folder ``source`` whose config.json ``edit`` has changed."""
    import json
    import shutil

    shutil.copytree(source, folder)
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("key, edit", [
    pytest.param("filters", lambda m: m["model"].update(filters=[4.0, 4.0, 1.0]),
                 id="float filters"),
    pytest.param("filters", lambda m: m["model"].update(filters=[True, True, True]),
                 id="bool filters"),
    pytest.param("kernels", lambda m: m["model"].update(kernels=[3.0, 3.0, 3.0]),
                 id="float kernels"),
    pytest.param("residual", lambda m: m["model"].update(residual="false"),
                 id="string residual"),
    pytest.param("in_channels", lambda m: m["model"].update(in_channels="1"),
                 id="string in_channels"),
    pytest.param("colour", lambda m: m["model"].update(colour="blue"),
                 id="unknown model key"),
    pytest.param("colour", lambda m: m.update(colour="blue"), id="unknown key"),
    pytest.param("trained_scales", lambda m: m.update(trained_scales="2"),
                 id="string trained_scales"),
    pytest.param("trained_scales", lambda m: m.update(trained_scales=[[1, 2]]),
                 id="two-factor trained scale"),
    pytest.param("trained_spacing", lambda m: m.update(trained_spacing=-1),
                 id="negative trained_spacing"),
    pytest.param("origin", lambda m: m.update(origin="caffe"), id="string origin"),
    pytest.param("format", lambda m: m.update(format="srrecnn-jax/99"), id="other format"),
])
def test_config_json_of_the_wrong_type_names_the_file_and_key(key, edit, models, tmp_path,
                                                                capfd):
    """A config.json with a float or bool ``filters``, a string ``residual`` (which Python
    would read as true), an unknown key or another mistyped field: ``info`` exits 1 with
    one line naming config.json and the key, and no orbax traceback."""
    folder = edited_model(models["mono"], tmp_path / "edited", edit)
    capfd.readouterr()
    assert cli.main(["info", str(folder)]) == 1
    line = one_error_line(capfd)
    assert str(folder / "config.json") in line and key in line


def test_config_json_that_does_not_fit_the_stored_parameters_is_one_line(models, tmp_path,
                                                                         capfd):
    """A well-typed config.json declaring 8 filters where 4 are stored: one line naming the
    folder and the parameters that do not fit, no orbax traceback."""
    folder = edited_model(models["mono"], tmp_path / "wider",
                          lambda m: m["model"].update(filters=[8, 4, 1]))
    capfd.readouterr()
    assert cli.main(["info", str(folder)]) == 1
    line = one_error_line(capfd)
    assert str(folder) in line and "conv1.kernel" in line


# --- 5. architectures beyond the documented limits are refused, from any source ----------


def test_caffemodel_of_3000_layers_is_refused_before_compiling(tmp_path, capfd):
    """A 3000-layer chain of 3^3 x 1 convolutions (a few hundred KB, written by the project's
    own caffe writer) would keep the compiler busy for minutes: ``info`` (which loads it as
    ``sr`` does) exits 1 with one line naming the file, the layer count and the limit."""
    import types

    from srrecnn_jax import caffe

    rng = np.random.default_rng(2)
    layers = 3000
    chain = types.SimpleNamespace(kernels=(3,) * layers, filters=(1,) * layers,
                                  padding="same", layers=layers)
    params = {f"conv{i + 1}": {"kernel": rng.normal(0, 0.1, (3, 3, 3, 1, 1)).astype(np.float32),
                               "bias": np.zeros(1, np.float32)} for i in range(layers)}
    path = tmp_path / "deep.caffemodel"
    path.write_bytes(caffe.caffemodel_bytes(params, chain))
    capfd.readouterr()
    assert cli.main(["info", str(path)]) == 1
    line = one_error_line(capfd)
    assert str(path) in line and "3000" in line and f"more than the {MAX_LAYERS}" in line


def test_model_folder_beyond_the_layer_limit_is_refused(models, tmp_path, capfd):
    """A model folder whose config.json declares one layer more than the limit: one line
    naming config.json and the limit (before any parameter is read)."""
    n = MAX_LAYERS + 1
    folder = edited_model(models["mono"], tmp_path / "deep",
                          lambda m: m["model"].update(kernels=[3] * n, filters=[4] * (n - 1) + [1]))
    capfd.readouterr()
    assert cli.main(["info", str(folder)]) == 1
    line = one_error_line(capfd)
    assert str(folder / "config.json") in line and f"more than the {MAX_LAYERS}" in line


@pytest.mark.parametrize("setting, refusal", [
    ("layers=101", f"101 convolutions, more than the {MAX_LAYERS} supported"),
    ("filters=2000", f"2000 channels, more than the {MAX_FILTERS} supported"),
    ("kernel=17", f"17^3 kernel, larger than the {MAX_KERNEL}^3 supported"),
])
def test_training_settings_beyond_the_limits_are_refused(setting, refusal, tmp_path, capfd):
    """``train --set layers=101`` (or 2000 filters, or a 17^3 kernel): exit 1 with one line
    saying which limit, and no run folder."""
    h5 = patch_file(tmp_path / "patches.h5")
    run = tmp_path / "run"
    args = ["train", str(h5), "--out-dir", str(run), "--quiet", "--set", "layers=2", "--set",
            "filters=2", "--set", "batch=2", "--set", "max_iter=1", "--set", setting]
    capfd.readouterr()
    assert cli.main(args) == 1
    assert refusal in one_error_line(capfd)
    assert not run.exists()


@pytest.mark.parametrize("batch", ["100000000", "100000000000"])
def test_a_batch_beyond_the_machines_memory_is_refused_before_any_work(batch, tmp_path,
                                                                       capfd):
    """A batch of 10^8 or 10^11 patches of 5^3 voxels (hundreds of GB) grew memory without
    bound: now one line naming --set batch and the memory it would need, exit 1, no run
    folder, at once (the patches it needs are never made)."""
    h5 = patch_file(tmp_path / "patches.h5")
    run = tmp_path / "run"
    args = ["train", str(h5), "--out-dir", str(run), "--quiet", "--set", "layers=2", "--set",
            "filters=2", "--set", f"batch={batch}", "--set", "max_iter=1"]
    capfd.readouterr()
    started = time.monotonic()
    assert cli.main(args) == 1
    line = one_error_line(capfd)
    assert "batch" in line and "GiB of memory" in line, line
    assert time.monotonic() - started < 30
    assert not run.exists()


# --- 6. training settings and data are checked before a run folder is written -----------


def train_args(data: Path, run: Path, *settings: str) -> list[str]:
    """``train`` of the tiny net for 8 steps, with ``settings`` (``key=value``) added."""
    args = ["train", str(data), "--out-dir", str(run), "--quiet", *TINY_RUN]
    for setting in settings:
        args += ["--set", setting]
    return args


def test_labels_smaller_than_the_data_are_refused_by_file(tmp_path, capfd):
    """An HDF5 patch set of 5^3 data patches with 3^3 labels: exit 1, one line naming the
    file, and no run folder (it used to crash in the first step, after writing one)."""
    h5 = patch_file(tmp_path / "mismatched.h5", patch=5, label_patch=3)
    run = tmp_path / "run"
    capfd.readouterr()
    assert cli.main(train_args(h5, run)) == 1
    line = one_error_line(capfd)
    assert str(h5) in line and "label" in line
    assert not run.exists()


def test_validation_image_too_small_for_the_validation_scale_is_refused(lr_path, tmp_path,
                                                                        capfd):
    """``--validate`` an 8 x 7 x 6 image with ``validation_scale=7`` (it would degrade to
    fewer than 2 voxels per axis and fail at the first validation, after checkpoints):
    exit 1, one line naming the image and the setting, no run folder."""
    h5 = patch_file(tmp_path / "patches.h5")
    run = tmp_path / "run"
    capfd.readouterr()
    assert cli.main(train_args(h5, run, "validation_scale=7") + ["--validate",
                                                                 str(lr_path)]) == 1
    line = one_error_line(capfd)
    assert str(lr_path) in line and "validation_scale" in line
    assert not run.exists()


def test_patch_scale_too_large_for_a_training_image_is_refused(lr_path, tmp_path, capfd):
    """Training on an 8 x 7 x 6 image with ``patch_scales=[60]``: exit 1, one line naming
    the setting, no run folder."""
    run = tmp_path / "run"
    capfd.readouterr()
    assert cli.main(train_args(lr_path, run, "patch=3", "patch_scales=[60]")) == 1
    assert "patch_scales" in one_error_line(capfd)
    assert not run.exists()


def test_run_that_failed_before_its_first_checkpoint_restarts_with_new_settings(tmp_path,
                                                                              capfd):
    """A run stopped by a NaN row before its first checkpoint (steps 1-2 logged), rerun in
    the same folder on clean data with another learning rate: it trains from step 1 with
    the new settings, and its metrics log holds each step once."""
    import json

    run = tmp_path / "run"
    poisoned = patch_file(tmp_path / "poisoned.h5", poison=("data", 5))
    clean = patch_file(tmp_path / "clean.h5")
    assert cli.main(train_args(poisoned, run, "checkpoint_every=100")) == 1
    assert cli.main(train_args(clean, run, "checkpoint_every=100",
                               "learning_rate=0.0005")) == 0
    assert json.loads((run / "train_config.json").read_text())["learning_rate"] == 0.0005
    steps = [json.loads(line)["step"] for line in
             (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_parameters_that_overflow_in_an_update_are_never_checkpointed(tmp_path, capfd):
    """SGD with a learning rate of 3e38 (finite in float32): the first update turns finite
    gradients into infinite parameters while the loss is still finite. With a checkpoint
    due every step and a log only every 100, the run stops at step 1 with one line naming
    the step, and leaves no checkpoint and no model."""
    h5 = patch_file(tmp_path / "patches.h5")
    run = tmp_path / "run"
    capfd.readouterr()
    assert cli.main(train_args(h5, run, "solver=sgd", "momentum=0", "learning_rate=3e38",
                               "log_every=100")) == 1
    line = one_error_line(capfd)
    assert "step 1" in line and "not finite" in line
    assert not any(p.name.isdigit() for p in (run / "checkpoints").iterdir())
    assert not (run / "model").exists()


# --- 7. outputs and inputs too large for this machine are refused before any work -------


def machine_with_memory(monkeypatch, size: int) -> None:
    """Make ``os.sysconf`` report ``size`` bytes of physical memory."""
    sysconf = os.sysconf

    def reported(name):
        if name == "SC_PHYS_PAGES":
            return size // sysconf("SC_PAGE_SIZE")
        return sysconf(name)

    monkeypatch.setattr(os, "sysconf", reported)


def test_scale_of_a_million_is_refused_naming_the_output_size(lr_path, out_dir, models,
                                                             capfd):
    """``-s 1e6`` on an 8 x 7 x 6 image asks for 8000000 x 7000000 x 6000000 voxels (it
    used to abort in C++ after a minute): exit 1 with one line naming --scale and that
    size, and no output."""
    capfd.readouterr()
    assert cli.main(sr_args(lr_path, out_dir / "out.nii.gz", models["mono"], "-s", "1e6")) == 1
    line = one_error_line(capfd)
    assert "--scale" in line and "8000000x7000000x6000000" in line
    assert listing(out_dir) == []


def test_output_larger_than_the_memory_is_refused_up_front(lr_path, out_dir, models, capfd,
                                                          monkeypatch):
    """On a machine with 256 MiB of memory, ``-s 40`` on an 8 x 7 x 6 image (a 320 x 280 x
    240 float32 output, with its network input and copies about 400 MiB) is refused
    before the zoom: one line naming --scale, the output size and the memory."""
    machine_with_memory(monkeypatch, 256 << 20)
    capfd.readouterr()
    assert cli.main(sr_args(lr_path, out_dir / "out.nii.gz", models["mono"], "-s", "40")) == 1
    line = one_error_line(capfd)
    assert "--scale" in line and "320x280x240" in line and "memory" in line
    assert listing(out_dir) == []


def nifti_bytes(array: np.ndarray, folder: Path) -> bytes:
    """The bytes of an uncompressed NIfTI-1 file of ``array`` (z, y, x) as SimpleITK writes."""
    path = folder / "plain.nii"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def test_small_file_declaring_a_huge_volume_is_refused_by_name(out_dir, models, tmp_path,
                                                              capfd):
    """A 100-byte .nii.gz whose header declares 2048^3 int16 voxels (16 GiB; reading it used
    to allocate them all and then fail as truncated, after a minute): exit 1 with one line
    naming the file and the declared size, and no output."""
    import gzip
    import struct

    raw = bytearray(nifti_bytes(np.ones((4, 4, 4), np.int16), tmp_path))
    raw[40:56] = struct.pack("<8h", 3, 2048, 2048, 2048, 1, 1, 1, 1)  # dim[0..7]
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    capfd.readouterr()
    assert cli.main(sr_args(path, out_dir / "out.nii.gz", models["mono"])) == 1
    line = one_error_line(capfd)
    assert str(path) in line and "2048x2048x2048" in line
    assert listing(out_dir) == []


def test_gzip_bomb_larger_than_the_memory_is_refused_before_reading(out_dir, models,
                                                                   tmp_path, capfd,
                                                                   monkeypatch):
    """A 13 MiB volume (192^3 int16) that compresses to a few KB, on a machine with 32 MiB of
    memory (reading it takes the image, its array and a float32 copy, about 54 MiB):
    exit 1 with one line naming the file and the memory, before any voxel is read."""
    import gzip

    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes(np.ones((192, 192, 192), np.int16), tmp_path)))
    machine_with_memory(monkeypatch, 32 << 20)
    capfd.readouterr()
    assert cli.main(sr_args(path, out_dir / "out.nii.gz", models["mono"])) == 1
    line = one_error_line(capfd)
    assert str(path) in line and "192x192x192" in line and "memory" in line
    assert listing(out_dir) == []


def test_data_after_the_voxels_of_a_nii_gz_is_never_decompressed(lr_path, out_dir, models,
                                                                 tmp_path, monkeypatch):
    """An input .nii.gz whose compressed stream goes on with 32 MiB of zeros after its
    voxels: it is read and super-resolved, and Python's gzip hands out less than 8 MiB in
    all (the completeness check stops at the last voxel the header declares)."""
    import gzip

    values = sitk.GetArrayFromImage(sitk.ReadImage(str(lr_path)))
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes(values, tmp_path) + bytes(32 << 20)))
    handed_out = []
    read = gzip.GzipFile.read

    def counting_read(self, *args, **kwargs):
        data = read(self, *args, **kwargs)
        handed_out.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    output = out_dir / "out.nii.gz"
    assert cli.main(sr_args(path, output, models["mono"])) == 0
    assert sitk.ReadImage(str(output)).GetSize() == tuple(2 * n for n in LR_SIZE)
    assert sum(handed_out) < 8 << 20


# --- 8. symbolic link loops as inputs ---------------------------------------------------


@pytest.fixture
def link_loop(tmp_path: Path) -> Path:
    """``a.nii.gz -> b.nii.gz -> a.nii.gz`` (``ln -s b a; ln -s a b``); returns a."""
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "a.nii.gz").symlink_to("b.nii.gz")
    (folder / "b.nii.gz").symlink_to("a.nii.gz")
    return folder / "a.nii.gz"


def test_symlink_loop_as_the_input_is_one_line_naming_it(link_loop, out_dir, models, capfd):
    """``sr a.nii.gz -o ...`` where a and b link to each other (it used to end in Python's
    "Symlink loop" traceback): exit 1, one line naming the file as a link loop, no
    output."""
    capfd.readouterr()
    assert cli.main(sr_args(link_loop, out_dir / "out.nii.gz", models["mono"])) == 1
    line = one_error_line(capfd)
    assert str(link_loop) in line and "symbolic link loop" in line
    assert listing(out_dir) == []


def test_symlink_loop_in_batch_mode_is_a_failed_job_naming_it(link_loop, lr_path, out_dir,
                                                              models, capfd):
    """Batch mode given the loop and a good image: the good one is written, the loop is one
    error line (and manifest row) naming it as a link loop, exit 1."""
    import json

    capfd.readouterr()
    assert cli.main(["sr", str(link_loop), str(lr_path), "--out-dir", str(out_dir), "-m",
                     str(models["mono"]), "-s", "2", "--quiet"]) == 1
    line = one_error_line(capfd)
    assert str(link_loop) in line and "symbolic link loop" in line
    rows = {row["input"]: row for row in map(json.loads, (
        out_dir / "srrecnn_manifest.jsonl").read_text().splitlines())}
    assert rows[str(link_loop)]["status"] == "error"
    assert "symbolic link loop" in rows[str(link_loop)]["error"]
    assert rows[str(lr_path)]["status"] == "ok"


# --- 9. Ctrl-C ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"], ids=["ctrl-c", "sigterm"])
def test_interrupt_before_the_output_is_written_exits_130_with_one_line(tmp_path, out_dir,
                                                                       models, signum):
    """The real command on a 64^3 image zoomed by 4 (a multimodal model, the reference off
    the output grid, so a note is printed just before the zoom and the network run),
    sent SIGINT (Ctrl-C) or SIGTERM (what a cluster's scheduler sends) as soon as that
    note is read: a point the run always passes before it writes its output, and from
    which the zoom and network take seconds, so no timer decides the outcome. Exit status
    130 for both signals, as batch mode and training give (it used to die of a
    segmentation fault in some tries, SIGTERM leaving its temporary folder behind), one
    "srrecnn: interrupted" line after the note, no traceback, no output and no temporary
    file. (With the signal a second after the note, a run on a busy machine once ended
    with exit 0 and its output: the interrupt was lost while the network ran.)"""
    import signal
    import subprocess
    import sys
    import threading

    import jax

    values = np.random.default_rng(3).uniform(0.1, 1.0, (64, 64, 64)).astype(np.float32)
    image = tmp_path / "t1.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(image))
    command = [sys.executable, "-m", "srrecnn_jax.cli", "sr", str(image), "-o",
               str(out_dir / "sr.nii.gz"), "-m", str(models["multi"]), "-r", str(image),
               "-s", "4"]
    env = dict(os.environ)
    if jax.default_backend() != "cpu":  # keep the run seconds long, as on a CPU
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        note = proc.stderr.readline()
        assert "resampled onto it" in note, note
        proc.send_signal(getattr(signal, signum))
        rest = proc.stderr.read()
        proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, f"exit {proc.returncode}: {rest[-2000:]}"
    assert rest.splitlines() == ["srrecnn: interrupted"], rest
    assert listing(out_dir) == []
