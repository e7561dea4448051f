"""checkpoints/scripts/evaluate.py: every shipped model, spline and the original weights, scored on
a real scan at isotropic and thick-slice scales (Colin27 by default; a fixture here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import checkpoints_script, write


@pytest.fixture(scope="module")
def evaluate():
    return checkpoints_script("evaluate")


def test_every_method_is_scored_at_every_condition(evaluate, anatomical_path, tmp_path):
    """One row per condition for spline and for each shipped model (the original weights
    too when ../shared is present), finite PSNR and SSIM, written to --json."""
    out = tmp_path / "rows.json"
    assert evaluate.main(["--hr", str(anatomical_path), "--regions", "crop",
                          "--conditions", "x2", "1x1x3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    methods = ["cubic spline", *evaluate.shipped_models()]
    assert "mni_x2" in methods
    assert sorted((r["condition"], r["method"]) for r in rows) == sorted(
        (c, m) for c in ("x2", "1x1x3") for m in methods)
    assert all(np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 for r in rows)


def test_a_missing_scan_is_one_line_and_exit_1(evaluate, tmp_path, capsys):
    assert evaluate.main(["--hr", str(tmp_path / "ch2.nii.gz")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_run_of_some_models_keeps_the_other_rows_of_the_json(evaluate, anatomical_path,
                                                                tmp_path):
    """--models mni_x2 into a file holding every method's x2 row: mni_x2's and spline's
    rows are replaced in place (new PSNR), the other methods' rows kept as they were,
    and the new condition's rows appended."""
    out = tmp_path / "rows.json"
    args = ["--hr", str(anatomical_path), "--regions", "crop", "--json", str(out)]
    assert evaluate.main([*args, "--conditions", "x2"]) == 0
    before = json.loads(out.read_text())["rows"]
    for row in before:
        row["psnr"] = -1.0
    out.write_text(json.dumps({"rows": before}))
    assert evaluate.main([*args, "--conditions", "x2", "x3", "--models", "mni_x2"]) == 0
    after = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["condition"]) for r in after[:len(before)]] == \
        [(r["method"], r["condition"]) for r in before]
    redone = {"cubic spline", "mni_x2"}
    assert all((r["psnr"] > 0) == (r["method"] in redone) for r in after[:len(before)])
    assert sorted(r["method"] for r in after[len(before):]) == sorted(redone)


def test_an_unknown_model_is_one_line_and_exit_2(evaluate, anatomical_path, capsys):
    assert evaluate.main(["--hr", str(anatomical_path), "--models", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture
def pair(anatomical, tmp_path):
    """A T1 and a second "modality" on its grid: the T1's intensities inverted inside
    the head, as T2 contrast roughly is."""
    t1 = np.asarray(sitk.GetArrayFromImage(anatomical), np.float64).transpose(2, 1, 0)
    other = np.where(t1 > 0, t1.max() - t1, 0.0)
    return write(t1, tmp_path / "t1.nii.gz"), write(other, tmp_path / "t2.nii.gz")


def test_with_a_reference_the_multimodal_methods_are_scored_and_given_it(
        evaluate, pair, models, tmp_path):
    """--reference scores the two-channel methods (the original multimodal weights when
    ../shared is present, an --extra two-channel model) and none of the monomodal ones;
    the model's score changes with the reference it is given."""
    t1, t2 = pair
    rows = {}
    for reference in (t2, t1):
        out = tmp_path / f"{reference.stem}.json"
        assert evaluate.main(["--hr", str(t1), "--reference", str(reference), "--regions",
                              "crop", "--conditions", "x2", "--extra", str(models["multi"]),
                              "--json", str(out)]) == 0
        rows[reference] = {r["method"]: r["psnr"] for r in
                           json.loads(out.read_text())["rows"]}
    methods = set(rows[t2])
    assert methods == {"cubic spline", *evaluate.shipped_models(2), str(models["multi"])}
    assert not methods & set(evaluate.shipped_models(1))
    assert rows[t2][str(models["multi"])] != rows[t1][str(models["multi"])]


def test_a_reference_off_the_grid_of_the_scan_is_one_line_and_exit_1(evaluate, pair, tmp_path,
                                                                     capsys):
    t1, _ = pair
    small = write(np.ones((20, 20, 20)), tmp_path / "small.nii.gz")
    assert evaluate.main(["--hr", str(t1), "--reference", str(small)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "small.nii.gz" in err


def test_an_unreadable_reference_is_one_line_and_exit_1(evaluate, pair, tmp_path, capsys):
    t1, _ = pair
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    assert evaluate.main(["--hr", str(t1), "--reference", str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.nii.gz" in err


def test_noise_is_rician_of_the_given_percent_of_the_peak(evaluate):
    """On a bright flat image (SNR 100) Rician noise is nearly Gaussian: 1% of a peak of
    200 is sigma 2 (std within 2%, mean within 0.05 of 100 + sigma^2 / 200); the same
    call gives the same image, and 0% gives the input itself."""
    flat = np.full((40, 40, 40), 100.0)
    noisy = evaluate.noisy(flat, 1.0, 200.0)
    assert abs(np.std(noisy) - 2.0) < 0.04
    assert abs(np.mean(noisy) - 100.02) < 0.05
    assert np.array_equal(noisy, evaluate.noisy(flat, 1.0, 200.0))
    assert evaluate.noisy(flat, 0.0, 200.0) is flat


def test_each_noise_level_is_its_own_condition(evaluate, anatomical_path, tmp_path):
    """--noise 0 5 scores each condition twice, the noisy one named for its level, and
    noise costs spline PSNR."""
    out = tmp_path / "rows.json"
    assert evaluate.main(["--hr", str(anatomical_path), "--regions", "crop", "--conditions",
                          "x2", "--models", "mni_x2", "--noise", "0", "5",
                          "--json", str(out)]) == 0
    rows = {(r["condition"], r["method"]): r["psnr"]
            for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(c, m) for c in ("x2", "x2 + 5% noise")
                         for m in ("cubic spline", "mni_x2")}
    assert rows["x2 + 5% noise", "cubic spline"] < rows["x2", "cubic spline"]


def test_a_noise_level_out_of_range_is_one_line_and_exit_2(evaluate, anatomical_path, capsys):
    assert evaluate.main(["--hr", str(anatomical_path), "--noise", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--noise" in err


def test_a_kspace_acquisition_is_its_own_condition_beside_the_release_model(
        evaluate, anatomical_path, tmp_path):
    """--psf gaussian kspace scores each condition under both observation models: the
    release's rows keep their names and numbers, the k-space rows are named for it and
    differ (the k-space LR keeps more detail, so spline scores higher on it)."""
    plain, both = tmp_path / "plain.json", tmp_path / "both.json"
    common = ["--hr", str(anatomical_path), "--regions", "crop", "--conditions", "x2",
              "--models", "mni_x2"]
    assert evaluate.main([*common, "--json", str(plain)]) == 0
    assert evaluate.main([*common, "--psf", "gaussian", "kspace", "--json", str(both)]) == 0
    rows = {(r["condition"], r["method"]): r["psnr"]
            for r in json.loads(both.read_text())["rows"]}
    before = {(r["condition"], r["method"]): r["psnr"]
              for r in json.loads(plain.read_text())["rows"]}
    assert set(rows) == {(c, m) for c in ("x2", "x2 k-space")
                         for m in ("cubic spline", "mni_x2")}
    assert all(rows[key] == value for key, value in before.items())
    assert rows["x2 k-space", "cubic spline"] > rows["x2", "cubic spline"]
