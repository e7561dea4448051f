"""checkpoints/scripts/export.py: a training run's checkpoint as a model folder that records the
original weights it was fine-tuned from (CeCILL-B provenance)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import checkpoints_script, write

from srrecnn_jax import cli, sources
from srrecnn_jax.checkpoint import load_model


@pytest.fixture(scope="module")
def export():
    return checkpoints_script("export")


@pytest.fixture(scope="module")
def two_channel_run(tmp_path_factory):
    """A tiny two-channel run (T1 and its inverse as the reference) with checkpoints at
    steps 2 and 4."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    hr = rng.uniform(10.0, 100.0, (24, 24, 20)).astype(np.float32)
    first = write(hr, root / "t1.nii.gz")
    other = write(110.0 - hr, root / "t2.nii.gz")
    h5 = root / "pair.h5"
    assert cli.main(["make-patches", "--mode", "intermod", "-f", str(first), "-i", str(other),
                     "-o", str(h5), "--patch", "9", "--stride", "5", "--border", "0,0,0",
                     "--quiet"]) == 0
    run = root / "run"
    settings = {"layers": 2, "filters": 4, "batch": 2, "in_channels": 2, "max_iter": 4,
                "checkpoint_every": 2, "log_every": 2, "keep": 2}
    assert cli.main(["train", str(h5), "--out-dir", str(run), "--quiet",
                     *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]) == 0
    return run


def test_a_chosen_step_is_written_with_the_multimodal_provenance(export, two_channel_run,
                                                                 tmp_path):
    """--step 2 writes checkpoint 2's parameters (bitwise) and records step 2 and the
    original multimodal weights' file and sha256 for a two-channel model."""
    out = tmp_path / "model"
    export.main([str(two_channel_run), str(out), "--step", "2"])
    written = load_model(out)
    expected = load_model(two_channel_run / "checkpoints" / "2")
    for a, b in zip(jax.tree_util.tree_leaves(written.params),
                    jax.tree_util.tree_leaves(expected.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    origin = json.loads((out / "config.json").read_text())["origin"]
    assert origin["step"] == 2
    assert origin["fine_tuned_from"] == sources.RELEASE[2]
    assert origin["fine_tuned_from"]["file"].startswith("Multi")


def test_a_step_without_a_checkpoint_is_an_error_naming_the_steps(export, two_channel_run,
                                                                  tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        export.main([str(two_channel_run), str(tmp_path / "model"), "--step", "3"])
    assert stop.value.code == 2
    assert "no checkpoint of step 3 (have [2, 4])" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_a_run_from_hdf5_patches_gets_the_scales_and_spacing_given(export, two_channel_run,
                                                                   tmp_path):
    """HDF5 patches record no scale or voxel size: --scales and --spacing supply them, so
    that the "scale not trained for" and voxel-size warnings work for the model."""
    out = tmp_path / "model"
    export.main([str(two_channel_run), str(out), "--scales", "2", "--spacing", "1"])
    written = load_model(out)
    assert (written.trained_scales, written.trained_spacing) == ([2.0], 1.0)


def test_an_output_in_a_missing_folder_is_one_error_line(export, two_channel_run, tmp_path,
                                                         capsys):
    out = tmp_path / "absent" / "model"
    with pytest.raises(SystemExit) as stop:
        export.main([str(two_channel_run), str(out)])
    assert stop.value.code == 2
    assert f"{out}: folder {out.parent} does not exist" in capsys.readouterr().err
    assert not out.parent.exists()


def test_the_run_itself_is_never_the_output(export, two_channel_run, capsys):
    with pytest.raises(SystemExit) as stop:
        export.main([str(two_channel_run), str(two_channel_run)])
    assert stop.value.code == 2
    assert "would replace the run" in capsys.readouterr().err
    assert (two_channel_run / "checkpoints" / "4").is_dir()


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("target", ["checkpoints", "model", "checkpoints/2"])
def test_no_part_of_a_run_is_ever_the_output(export, two_channel_run, target, capsys):
    """``export.py run run/checkpoints`` deleted every checkpoint; its model/ and a step's
    folder are parts of the run too: one error line, exit 2, the run byte for byte."""
    before = snapshot(two_channel_run)
    with pytest.raises(SystemExit) as stop:
        export.main([str(two_channel_run), str(two_channel_run / target)])
    assert stop.value.code == 2
    assert "training run" in capsys.readouterr().err
    assert snapshot(two_channel_run) == before


def test_a_folder_that_is_not_a_model_folder_is_never_replaced(export, two_channel_run,
                                                                tmp_path, capsys):
    """``export.py run M/model/params`` broke model M; any folder holding other files is
    refused likewise, untouched."""
    from srrecnn_jax.checkpoint import save_model

    (tmp_path / "M").mkdir()
    other = save_model(tmp_path / "M" / "model", load_model(two_channel_run))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("mine")
    for target in (other / "params", tmp_path / "notes"):
        before = snapshot(target.parent)
        with pytest.raises(SystemExit):
            export.main([str(two_channel_run), str(target)])
        assert "other than a model folder" in capsys.readouterr().err
        assert snapshot(target.parent) == before


@pytest.mark.parametrize("option, value", [("--scales", "nan"), ("--spacing", "inf"),
                                           ("--spacing", "0")])
def test_a_scale_or_spacing_that_is_not_a_finite_positive_number_is_refused(
        export, two_channel_run, tmp_path, option, value, capsys):
    """``--scales nan`` / ``--spacing inf`` wrote folders that loading then refused."""
    out = tmp_path / "m"
    with pytest.raises(SystemExit) as stop:
        export.main([str(two_channel_run), str(out), option, value])
    assert stop.value.code == 2
    assert option in capsys.readouterr().err
    assert not out.exists()
