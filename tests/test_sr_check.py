"""``srrecnn sr --check``: the per-scan checks said on stderr, warned about when the model
is predicted to lose to cubic spline, and given by ``--json``."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from srrecnn_jax import config, model
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.cli import main


@pytest.fixture(scope="module")
def harmful(tmp_path_factory):
    """A tiny model whose network adds 0.2 of the range everywhere: worse than spline."""
    cfg = config.tiny()
    params = jax.tree_util.tree_map(np.zeros_like, model.init(jax.random.PRNGKey(0), cfg))
    params["conv3"]["bias"] = np.full_like(params["conv3"]["bias"], 0.2)
    return save_model(tmp_path_factory.mktemp("harmful") / "model", LoadedModel(params, cfg))


@pytest.fixture
def scan(blob_scan):
    return blob_scan


def test_json_holds_the_checks_and_a_negative_prediction_is_warned(harmful, scan, tmp_path,
                                                                   capsys):
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(scan), "-o", str(out), "-m", str(harmful), "-s", "2",
                 "--check", "--json"]) == 0
    captured = capsys.readouterr()
    facts = json.loads(captured.out)
    assert facts["input"] == str(scan) and facts["size"] == [40, 44, 36]
    assert set(facts) >= {"noise_percent", "falloff", "self_check_psf", "self_check_gain_db"}
    assert facts["self_check_gain_db"] < -3
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("srrecnn: warning:")]
    assert len(warnings) == 1 and "behind cubic spline" in warnings[0], captured.err


def test_json_without_check_has_no_checks(harmful, scan, tmp_path, capsys):
    assert main(["sr", str(scan), "-o", str(tmp_path / "sr.nii.gz"), "-m", str(harmful),
                 "-s", "2", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert "self_check_gain_db" not in facts and facts["size"] == [40, 44, 36]


def test_batch_rows_carry_the_checks_and_the_warning(harmful, scan, tmp_path):
    """Batch mode with --check: each ok row holds the self-check beside the noise estimate,
    and the predicted loss among its warnings."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(scan, folder / "scan.nii.gz")
    assert main(["sr", str(folder), "--out-dir", str(tmp_path / "out"), "-m", str(harmful),
                 "-s", "2", "--check", "--quiet"]) == 0
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "srrecnn_manifest.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["status"] == "ok"]
    assert row["self_check_gain_db"] < -3 and row["self_check_psf"] in ("gaussian", "kspace")
    assert row["noise_percent"] is not None and row["falloff"] is not None
    assert any("behind cubic spline" in w for w in row["warnings"])


def test_batch_rows_without_check_have_no_self_check(harmful, scan, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(scan, folder / "scan.nii.gz")
    assert main(["sr", str(folder), "--out-dir", str(tmp_path / "out"), "-m", str(harmful),
                 "-s", "2", "--quiet"]) == 0
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "srrecnn_manifest.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["status"] == "ok"]
    assert row["self_check_gain_db"] is None and row["noise_percent"] is not None


@pytest.mark.parametrize("option", ["--check", "--auto-model"])
def test_the_input_file_is_read_once_for_the_checks_and_the_run(option, harmful, scan,
                                                                  tmp_path, monkeypatch):
    """The checks and the run share one reading of the input (a large scan, or a DICOM
    series, is not read twice)."""
    from srrecnn_jax import images, inference

    reads = []

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    real = images.read_input
    monkeypatch.setattr(images, "read_input", counted)
    monkeypatch.setattr(inference, "read_input", counted)
    assert main(["sr", str(scan), "-o", str(tmp_path / "sr.nii.gz"), "-m", str(harmful),
                 "-s", "2", option, "--quiet"]) == 0
    assert reads == [str(scan)]
