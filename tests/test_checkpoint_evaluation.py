"""checkpoints/evaluate.py: every shipped model, spline and the original weights, scored on
a real scan at isotropic and thick-slice scales (Colin27 by default; a fixture here)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def evaluate():
    spec = importlib.util.spec_from_file_location("evaluate", REPO / "checkpoints" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
