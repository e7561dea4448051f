"""``srrecnn sr --auto-model``: the shipped model predicted to do best runs when the one
asked for is predicted to lose; the choice is said on stderr and given by ``--json``."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from srrecnn_jax import catalog, config, model
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.cli import main
from srrecnn_jax.images import read_image, to_array


def _constant(value: float) -> LoadedModel:
    """A tiny model trained (it says) at x2 whose network adds ``value`` of the range
    everywhere: 0 returns the spline zoom, 0.2 is far worse than spline."""
    cfg = config.tiny()
    params = jax.tree_util.tree_map(np.zeros_like, model.init(jax.random.PRNGKey(0), cfg))
    params["conv3"]["bias"] = np.full_like(params["conv3"]["bias"], value)
    return LoadedModel(params, cfg, trained_scales=[2.0])


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """A shelf of one shipped model, ``level-x2`` (zero residual), in place of ours."""
    (tmp_path / "shelf" / "level_x2").mkdir(parents=True)
    save_model(tmp_path / "shelf" / "level_x2" / "model", _constant(0.0))
    (tmp_path / "shelf" / "level_x2" / catalog.CARD).write_text('{"task": "-", "data": "-"}')
    monkeypatch.setattr(catalog, "CHECKPOINTS", tmp_path / "shelf")
    return tmp_path / "shelf"


@pytest.fixture
def harmful(tmp_path):
    (tmp_path / "harmful").mkdir()
    return save_model(tmp_path / "harmful" / "model", _constant(0.2))


@pytest.fixture
def scan(blob_scan):
    return blob_scan


def test_a_model_predicted_to_lose_is_replaced_and_json_says_so(shelf, harmful, scan,
                                                                tmp_path, capsys):
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(scan), "-o", str(out), "-m", str(harmful), "-s", "2",
                 "--auto-model", "--json"]) == 0
    captured = capsys.readouterr()
    facts = json.loads(captured.out)
    assert facts["auto_model"]["chosen"] == "level-x2"
    assert facts["auto_model"]["gains_db"]["asked"] < -3
    assert abs(facts["self_check_gain_db"]) < 1e-3
    assert "using level-x2" in captured.err


def test_the_output_is_the_chosen_models(shelf, harmful, scan, tmp_path):
    """level-x2's residual is zero: the output is the spline zoom of the input."""
    auto, plain = tmp_path / "auto.nii.gz", tmp_path / "plain.nii.gz"
    assert main(["sr", str(scan), "-o", str(auto), "-m", str(harmful), "-s", "2",
                 "--auto-model", "--quiet"]) == 0
    assert main(["sr", str(scan), "-o", str(plain), "-m", str(shelf / "level_x2" / "model"),
                 "-s", "2", "--quiet"]) == 0
    np.testing.assert_array_equal(to_array(read_image(auto)), to_array(read_image(plain)))


@pytest.mark.parametrize("extra, words", [
    (["--adapt", "5"], "--auto-model: give either --auto-model or --adapt"),
    (["-r", "REF"], "--auto-model: takes monomodal models only"),
])
def test_unsupported_combinations_are_one_error_line(shelf, harmful, scan, tmp_path, capsys,
                                                     extra, words):
    extra = [str(scan) if e == "REF" else e for e in extra]
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(scan), "-o", str(out), "-m", str(harmful), "-s", "2",
                 "--auto-model", *extra]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_batch_mode_is_refused(shelf, harmful, scan, tmp_path, capsys):
    assert main(["sr", str(scan), "--out-dir", str(tmp_path / "out"), "-m", str(harmful),
                 "-s", "2", "--auto-model"]) != 0
    err = capsys.readouterr().err
    assert "--auto-model: applies to a single input" in err
    assert not (tmp_path / "out").exists()
