"""``srrecnn train`` on images, as the shipped recipe runs: held-out scores, curves, signals.

Training and validation images are two disjoint slabs of nibabel's real 2 mm T1
(33 x 41 x 25): z 0-12 to train on, z 13-24 held out. The network is tiny.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import REPO, crop, package_file, write

from srrecnn_jax.checkpoint import checkpoint_steps, load_model
from srrecnn_jax.cli import main
from srrecnn_jax.degradation import degrade
from srrecnn_jax.images import read_volume
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.metrics import psnr

RECIPE = REPO / "checkpoints" / "mni_x2" / "config.toml"
TINY = ["--set", "layers=3", "--set", "filters=4", "--set", "batch=2", "--set", "patch=9"]


@pytest.fixture(scope="module")
def slabs(tmp_path_factory) -> tuple[Path, Path]:
    anatomical = sitk.ReadImage(str(package_file("nibabel", "tests/data/anatomical.nii")))
    folder = tmp_path_factory.mktemp("slabs")
    train = write(crop(anatomical, (0, 0, 0), (33, 41, 13)), folder / "train.nii.gz")
    held_out = write(crop(anatomical, (0, 0, 13), (33, 41, 12)), folder / "val.nii.gz")
    return train, held_out


@pytest.fixture(scope="module")
def validated_run(slabs, tmp_path_factory) -> Path:
    """Four steps of the shipped recipe (tiny net), validated and checkpointed every two."""
    train, held_out = slabs
    run = tmp_path_factory.mktemp("train") / "run"
    status = main(["train", str(train), "--out-dir", str(run), "--config", str(RECIPE), *TINY,
                   "--set", "max_iter=4", "--set", "steps=[2]", "--set", "log_every=2",
                   "--set", "validate_every=2", "--set", "checkpoint_every=2",
                   "--validate", str(held_out), "--quiet"])
    assert status == 0
    return run


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_thick_slice_export_writes_the_triples_and_the_originals_provenance(slabs, tmp_path):
    """``checkpoints/scripts/export.py``: a run's latest checkpoint as a model folder
    recording its anisotropic scales as (x, y, z) triples, its step, and the CeCILL-B
    source it was fine-tuned from."""
    train, _ = slabs
    run, out = tmp_path / "run", tmp_path / "model"
    assert main(["train", str(train), "--out-dir", str(run), *TINY, "--set", "max_iter=2",
                 "--set", "patch_scales=[[1, 1, 2], [1, 1, 3]]", "--set", "blur=slice_profile",
                 "--set", "validation_scale=[1, 1, 2]", "--quiet"]) == 0
    subprocess.run([sys.executable, str(REPO / "checkpoints" / "scripts" / "export.py"),
                    str(run), str(out)], check=True, capture_output=True, timeout=300)
    exported = load_model(out)
    assert exported.trained_scales == [[1.0, 1.0, 2.0], [1.0, 1.0, 3.0]]
    assert exported.trained_spacing == 2.0  # the 2 mm slab's, from the checkpoint
    assert exported.origin["step"] == 2
    assert exported.origin["fine_tuned_from"]["licence"] == "CeCILL-B"
    assert all(np.array_equal(exported.params[n][k], load_model(run).params[n][k])
               for n in exported.params for k in exported.params[n])


def test_images_matching_a_glob_train_at_its_scales_and_the_model_records_all(slabs,
                                                                              tmp_path):
    """``patch_scales_by_file``: the glob's scales for the images it matches, recorded
    with the common ones as trained, and saved so a rerun resumes with them."""
    train, held_out = slabs
    run = tmp_path / "run"
    assert main(["train", str(train), str(held_out), "--out-dir", str(run), *TINY,
                 "--set", "max_iter=1", "--set", 'patch_scales_by_file={"val*" = [3]}',
                 "--quiet"]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["patch_scales_by_file"] == {"val*": [3.0]}
    assert load_model(run / "model").trained_scales == [2.0, 3.0]
    assert main(["train", str(train), str(held_out), "--out-dir", str(run), "--quiet"]) == 0


def test_a_scales_glob_matching_no_training_image_is_one_error_line(slabs, tmp_path, capsys):
    """A mistyped glob would silently train every image at the common scales."""
    train, _ = slabs
    status = main(["train", str(train), "--out-dir", str(tmp_path / "run"), *TINY,
                   "--set", 'patch_scales_by_file={"*_3mm.nii.gz" = [3]}', "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1  # as any bad training setting
    assert "patch_scales_by_file" in err and "'*_3mm.nii.gz' matches none" in err
    assert not (tmp_path / "run").exists()


def test_an_image_too_thin_for_its_own_scales_is_one_error_line_naming_it(slabs, tmp_path,
                                                                          capsys):
    """The held-out slab's 12 planes leave one at 1x1x7: the error names that file and
    the setting its scale came from."""
    train, held_out = slabs
    status = main(["train", str(train), str(held_out), "--out-dir", str(tmp_path / "run"), *TINY,
                   "--set", 'patch_scales_by_file={"val*" = [[1, 1, 7]]}', "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert f"training image {held_out}" in err and "patch_scales_by_file [1, 1, 7]" in err


def test_images_train_with_the_recipe_settings(validated_run):
    """The recipe file's settings, overridden by --set, are the run's settings."""
    saved = json.loads((validated_run / "train_config.json").read_text())
    assert saved["model"]["filters"] == [4, 4, 1] and saved["patch"] == 9
    assert saved["patch_scales"] == [2.0] and saved["learning_rate"] == 0.001
    assert [row["step"] for row in logged(validated_run)] == [2, 4]
    assert checkpoint_steps(validated_run) == [2, 4]


def test_model_trained_on_images_records_its_scales(validated_run):
    """So that `srrecnn sr` warns when the model is used at another scale."""
    assert load_model(validated_run / "model").trained_scales == [2.0]


def test_model_trained_on_images_records_their_voxel_size(validated_run):
    """So that `srrecnn sr` warns when an input's output grid is far from it (2 mm slab)."""
    assert load_model(validated_run / "model").trained_spacing == 2.0


def test_a_checkpoint_records_the_scales_and_voxel_size_before_the_run_ends(validated_run):
    """A run still training can be scored and shipped with the same warnings."""
    checkpoint = load_model(validated_run / "checkpoints" / "2")
    assert (checkpoint.trained_scales, checkpoint.trained_spacing) == ([2.0], 2.0)


def test_a_checkpoint_with_a_bad_voxel_size_is_one_error_line_naming_it(validated_run,
                                                                        tmp_path, capsys):
    """A damaged checkpoint's metadata is refused before any parameter is read."""
    step = tmp_path / "run" / "checkpoints" / "2"
    shutil.copytree(validated_run / "checkpoints" / "2", step)
    (tmp_path / "run" / "train_config.json").write_text(
        (validated_run / "train_config.json").read_text())
    meta_file = step / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "trained_spacing": -1}))
    assert main(["info", str(step)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert f"{step}: invalid checkpoint metadata: trained_spacing" in err


def test_validation_logs_the_final_models_scores_on_the_held_out_image(validated_run, slabs):
    """Scores recomputed here: the trained model on the degraded held-out slab (PSNR to
    1e-6 dB), and scipy's cubic spline of it (1e-3 dB: float64 here, float32 there)."""
    last = logged(validated_run)[-1]
    hr = read_volume(slabs[1])
    lr, truth = degrade(hr, (2, 2, 2))
    factors = [a / b for a, b in zip(truth.shape, lr.shape)]
    model = load_model(validated_run)
    sr = super_resolve_array(model.params, model.config, lr, factors)
    spline = scipy.ndimage.zoom(lr.astype(np.float64), factors, order=3)
    assert last["val_psnr"] == pytest.approx(psnr(sr, truth), abs=1e-6)
    assert last["val_spline_psnr"] == pytest.approx(psnr(spline, truth), abs=1e-3)
    assert 0 < last["val_ssim"] < 1 and 0 < last["val_spline_ssim"] < 1


def test_thick_slice_training_with_augmentations_validates_on_thick_slices(slabs, tmp_path):
    """[1, 1, 2] slices with the slice-profile blur, noise and flips: the run trains, records
    its settings, the per-axis factors as trained scales, and scores the held-out slab
    degraded by the same thick slices (spline PSNR recomputed with scipy: blur along z
    only, sigma 2 / 2.3548, to 1e-3 dB)."""
    train, held_out = slabs
    run = tmp_path / "run"
    assert main(["train", str(train), "--out-dir", str(run), *TINY, "--set", "max_iter=2",
                 "--set", "log_every=2", "--set", "patch_scales=[[1, 1, 2]]",
                 "--set", "validation_scale=[1, 1, 2]", "--set", "blur=slice_profile",
                 "--set", "augment.noise=[0.01, 0.02]", "--set", "augment.flips=true",
                 "--validate", str(held_out), "--quiet"]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["patch_scales"] == [[1, 1, 2]] and saved["blur"] == "slice_profile"
    assert saved["augment"]["noise"] == [0.01, 0.02] and saved["augment"]["flips"] is True
    assert load_model(run / "model").trained_scales == [[1.0, 1.0, 2.0]]
    hr = read_volume(held_out).astype(np.float64)
    blurred = scipy.ndimage.gaussian_filter1d(hr, 2 / 2.3548200450309493, axis=2)
    truth = hr[:, :, :12]
    lr = scipy.ndimage.zoom(blurred[:, :, :12], (1, 1, 0.5), order=3)
    spline = scipy.ndimage.zoom(lr, (1, 1, 2), order=3)
    assert logged(run)[-1]["val_spline_psnr"] == pytest.approx(psnr(spline, truth), abs=1e-3)


def test_validation_draws_the_curves(validated_run):
    png = (validated_run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_sigterm_stops_training_with_exit_130_and_a_checkpoint(slabs, tmp_path):
    """A cluster's SIGTERM (pre-emption) saves the current step; the same command resumes."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "srrecnn_jax.cli", "train", str(slabs[0]), "--out-dir",
               str(run), *TINY, "--set", "max_iter=100000", "--set", "log_every=1",
               "--set", "checkpoint_every=100000", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "the same command resumes" in err and "Traceback" not in err
    assert len(checkpoint_steps(run)) == 1


def test_info_describes_a_checkpoint_folder(validated_run, capsys):
    """A run's checkpoints/<step> folder: its architecture, from the checkpoint alone."""
    assert main(["info", str(validated_run / "checkpoints" / "2"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["config"]["filters"] == [4, 4, 1]
    assert facts["parameters"] == (27 * 4 + 4) + (27 * 16 + 4) + (27 * 4 + 1)
    assert facts["origin"]["step"] == 2


def test_export_caffe_of_a_checkpoint_folder_holds_that_steps_parameters(validated_run,
                                                                        tmp_path):
    """Step 2's parameters, not the final model's (they differ after two more steps)."""
    from srrecnn_jax.caffe import load_caffemodel

    out = tmp_path / "step2.caffemodel"
    assert main(["export-caffe", str(validated_run / "checkpoints" / "2"), "-o", str(out)]) == 0
    exported = load_caffemodel(out).params
    step2 = load_model(validated_run / "checkpoints" / "2").params
    final = load_model(validated_run).params
    for name, layer in step2.items():
        np.testing.assert_array_equal(exported[name]["kernel"], layer["kernel"])
        np.testing.assert_array_equal(exported[name]["bias"], layer["bias"])
    assert not np.array_equal(exported["conv1"]["kernel"], final["conv1"]["kernel"])


def test_the_progress_bars_rate_counts_only_the_steps_this_process_ran(monkeypatch):
    """A run resumed at step 600 of 1100: after 10 steps in 20 s the bar shows 2 s a step
    and 16:20 left for the 490 to go (it showed 610 steps over the 20 s, 30 steps/s, and
    16 s left)."""
    import io as stdio

    from tqdm import std as tqdm_std
    from tqdm import tqdm

    from srrecnn_jax.cli.train import progress

    clock = [1000.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: clock[0])  # the bar's clock
    with tqdm(total=1100, file=stdio.StringIO()) as bar:
        on_log = progress(bar)
        metrics = {"loss": 1.0, "learning_rate": 3e-5, "steps_per_s": 0.5,
                   "data_wait_fraction": 0.01}
        on_log({**metrics, "step": 600})
        clock[0] += 20.0
        on_log({**metrics, "step": 610})
        shown = bar.format_dict
    elapsed, done = shown["elapsed"], shown["n"] - shown["initial"]
    assert (done, elapsed) == (10, 20.0)
    assert "[00:20<16:20,  2.00s/it" in tqdm.format_meter(**shown)
