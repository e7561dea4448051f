"""checkpoints/scripts/evaluate_real.py: models for real acquisitions scored per scan,
observation model and noise, with the self-check beside the true gain, the confusion
table, wins against a baseline and the targets a candidate misses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import checkpoints_script, crop, write

from srrecnn_jax.checkpoint import load_model


@pytest.fixture(scope="module")
def evaluate_real():
    return checkpoints_script("evaluate_real")


def row(scan, condition, method, psnr, gain=None, check=None, psf="kspace", noise=0.0,
        top=1.0):
    r = {"scan": scan, "condition": condition, "method": method, "psnr": psnr,
         "psf": psf, "noise": noise}
    if gain is not None:
        r |= {"gain_db": gain, "self_check_gain_db": check, "max_over_input": top}
    return r


def test_confusion_counts_sign_agreements(evaluate_real):
    rows = [row("a", "c", "m", 30, gain=1.0, check=0.5),    # true positive
            row("a", "d", "m", 30, gain=-1.0, check=-0.2),  # true negative
            row("b", "c", "m", 30, gain=-1.0, check=0.3),   # false positive
            row("b", "d", "m", 30, gain=0.4, check=-0.1),   # false negative
            row("b", "d", "cubic spline", 29)]              # no gain: not a cell
    assert evaluate_real.confusion(rows) == {"agree": 2, "cells": 4, "tp": 1, "tn": 1,
                                             "fp": 1, "fn": 1}


def test_versus_counts_cells_won_and_lost(evaluate_real):
    rows = [row("a", "c", "new", 31), row("a", "c", "old", 30),
            row("a", "d", "new", 29), row("a", "d", "old", 30),
            row("b", "c", "new", 32), row("b", "c", "old", 31),
            row("b", "d", "new", 30), row("b", "d", "old", 30)]  # a tie counts neither
    assert evaluate_real.versus(rows, "new", "old") == {"wins": 2, "losses": 1}


def test_versus_of_numpy_scores_is_plain_json(evaluate_real):
    """PSNRs come as NumPy floats; the counts must still be written as JSON."""
    rows = [row("a", "c", "new", np.float64(31)), row("a", "c", "old", np.float64(30))]
    assert json.loads(json.dumps(evaluate_real.versus(rows, "new", "old"))) == {
        "wins": 1, "losses": 0}


def test_target_misses_name_scan_condition_and_size(evaluate_real):
    rows = [row("ce", "k-space 0%", "new", 30, gain=0.6, check=0.1),           # < +1
            row("ce", "k-space 1%", "new", 30, gain=0.6, check=0.1, noise=1.0),  # >= +0.5
            row("ce", "gaussian 3%", "new", 30, gain=-0.1, check=0.1, psf="gaussian",
                noise=3.0, top=1.3)]
    misses = evaluate_real.target_misses(rows, "new")
    assert misses == ["ce, k-space 0%: +0.60 dB over spline (target +1.0)",
                      "ce, gaussian 3%: -0.10 dB over spline (target +0.0)",
                      "ce, gaussian 3%: output at 1.30x the input's maximum"]


def test_a_cell_scores_spline_and_each_model_with_the_self_check(evaluate_real, models,
                                                                 anatomical):
    """On a real 2 mm crop with a tiny model: spline's row, then the model's with its gain,
    its maximum over the input's (never above the ceiling) and the self-check."""
    hr = sitk.GetArrayFromImage(crop(anatomical, (4, 4, 0), (24, 28, 20))).T.astype(float)
    tiny = load_model(models["mono"])
    rows = evaluate_real.score_cell(hr, False, "kspace", 1.0, {"tiny": tiny})
    assert [r["method"] for r in rows] == ["cubic spline", "tiny"]
    model_row = rows[1]
    assert model_row["gain_db"] == pytest.approx(model_row["psnr"] - rows[0]["psnr"],
                                                 abs=1e-3)
    assert model_row["max_over_input"] <= 1.2 + 1e-6
    assert np.isfinite(model_row["self_check_gain_db"])
    assert model_row["self_check_psf"] in ("gaussian", "kspace")


def test_main_writes_rows_and_summary(evaluate_real, anatomical, tmp_path):
    """The whole command on stand-in scans (a real 2 mm T1 as Colin27 and as each held-out
    slab), one model: every scan x condition has spline's row and the model's."""
    real = tmp_path / "real"
    real.mkdir()
    colin = write(crop(anatomical, (4, 4, 0), (24, 28, 24)), tmp_path / "colin.nii.gz")
    for name in evaluate_real.REAL_HELD_OUT:
        write(crop(anatomical, (2, 2, 2), (24, 24, 16)), real / f"{name}_heldout.nii.gz")
    out = tmp_path / "scores.json"
    assert evaluate_real.main(["--colin", str(colin), "--real", str(real), "--models",
                               "mono_x2", "--candidate", "mono_x2", "--versus",
                               "mono_x2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    cells = {(r["scan"], r["condition"], r["method"]) for r in result["rows"]}
    assert len(cells) == 5 * 8 * 2
    assert result["summary"]["confusion"]["mono_x2"]["cells"] == 5 * 8
    assert isinstance(result["summary"]["misses"], list)


def test_montage_of_the_real_2mm_scan_has_a_column_per_model(tmp_path):
    """checkpoints/scripts/montage_real.py: spline and each named model, 3 inches a column."""
    montage = checkpoints_script("montage_real")
    png = tmp_path / "real.png"
    assert montage.main([str(png), "mni-x2"]) == 0
    assert sitk.ReadImage(str(png)).GetSize()[0] >= 2 * 3 * 80
