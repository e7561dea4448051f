"""Run folders as models: the shipped checkpoints/mni_x2 (a finished run with no training
checkpoints kept) loads wherever a model is expected, and a failed load changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, crop

from srrecnn_jax.caffe import load_caffemodel
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.cli import main

SHIPPED_RUN = REPO / "checkpoints" / "mni_x2"


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder``: relative path -> (size, mtime in ns)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            stat = path.stat()
            out[str(path.relative_to(folder))] = (stat.st_size if path.is_file() else 0,
                                                  stat.st_mtime_ns)
    return out


def test_shipped_run_folder_loads_its_model():
    """``load_model(checkpoints/mni_x2)`` gives the parameters of its model/ folder."""
    run, final = load_model(SHIPPED_RUN), load_model(SHIPPED_RUN / "model")
    assert run.config == final.config
    for layer in final.params:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(run.params[layer][leaf], final.params[layer][leaf])


def test_info_on_the_shipped_run_folder(capsys):
    """``srrecnn info checkpoints/mni_x2 --json``: the 5-layer, 16-filter ReCNN."""
    assert main(["info", str(SHIPPED_RUN), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["config"]["kernels"] == [3] * 5
    assert facts["config"]["filters"] == [16] * 4 + [1]


def test_export_caffe_of_the_shipped_run_folder(tmp_path):
    """``export-caffe checkpoints/mni_x2``: a caffemodel holding the model/ parameters."""
    out = tmp_path / "mni_x2.caffemodel"
    assert main(["export-caffe", str(SHIPPED_RUN), "-o", str(out)]) == 0
    back, final = load_caffemodel(out), load_model(SHIPPED_RUN / "model")
    for layer in final.params:
        np.testing.assert_array_equal(back.params[layer]["kernel"], final.params[layer]["kernel"])
        np.testing.assert_array_equal(back.params[layer]["bias"], final.params[layer]["bias"])


def test_sr_with_the_shipped_run_folder_equals_its_model(anatomical, tmp_path):
    """``sr -m checkpoints/mni_x2`` writes the same voxels as ``-m checkpoints/mni_x2/model``."""
    source = tmp_path / "lr.nii.gz"
    sitk.WriteImage(crop(anatomical, (4, 4, 4), (12, 12, 10)), str(source))
    outputs = {}
    for name, model in (("run", SHIPPED_RUN), ("model", SHIPPED_RUN / "model")):
        outputs[name] = tmp_path / f"{name}.nii.gz"
        assert main(["sr", str(source), "-o", str(outputs[name]), "-m", str(model),
                     "-s", "2"]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["run"]))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(outputs["model"]))))


@pytest.mark.parametrize("command", ["info", "export-caffe", "sr"])
def test_failed_load_of_a_run_leaves_the_folder_untouched(command, anatomical, tmp_path,
                                                         capsys):
    """A run folder with settings but no checkpoint and no model: one error line, exit 1,
    and not a file or folder added or changed in it (no empty checkpoints/)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(
        (SHIPPED_RUN / "train_config.json").read_text(encoding="utf-8"), encoding="utf-8")
    before = tree(run)
    source = tmp_path / "lr.nii.gz"
    sitk.WriteImage(crop(anatomical, (4, 4, 4), (8, 8, 8)), str(source))
    argv = {"info": ["info", str(run)],
            "export-caffe": ["export-caffe", str(run), "-o", str(tmp_path / "x.caffemodel")],
            "sr": ["sr", str(source), "-o", str(tmp_path / "x.nii.gz"), "-m", str(run),
                   "-s", "2"]}[command]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint" in err[0] and str(run) in err[0]
    assert tree(run) == before
    assert not (tmp_path / "x.caffemodel").exists() and not (tmp_path / "x.nii.gz").exists()
