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
