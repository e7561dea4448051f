"""``auto_model.choose``: the asked-for model unless the self-check predicts it loses to
cubic spline (or it was not trained for the scale), else the shipped model of the best
predicted gain."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.ndimage

from srrecnn_jax import auto_model, catalog, model
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.config import recnn


def _model(gain: float, scales: list, channels: int = 1) -> LoadedModel:
    """A 2-layer, 4-filter model of zero residual (it returns the spline zoom), whose
    last bias holds ``gain``: the gain ``fake_check`` predicts for it."""
    config = recnn(layers=2, filters=4, in_channels=channels)
    params = model.init(jax.random.key(0), config)
    params["conv2"] = {"kernel": params["conv2"]["kernel"] * 0,
                       "bias": params["conv2"]["bias"] * 0 + gain}
    return LoadedModel(params, config, trained_scales=scales)


@pytest.fixture
def fake_check(monkeypatch):
    """The self-check replaced by the gain each model carries in its last bias, so that
    the choice itself is tested; returns the models checked, in order."""
    checked = []

    def gain(params, config, *args, **kwargs) -> float:
        checked.append(float(params["conv2"]["bias"][0]))
        return checked[-1]

    monkeypatch.setattr(auto_model, "self_check_gain_db", gain)
    return checked


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    """Shipped models (predicted gain, trained scale): ``better_x2`` (+1, 2),
    ``worse_x2`` (-3, 2), ``other_x3`` (+5, 3) and ``pair_x2`` (two channels)."""
    for name, m in {"better_x2": _model(1.0, [2.0]), "worse_x2": _model(-3.0, [2.0]),
                    "other_x3": _model(5.0, [3.0]),
                    "pair_x2": _model(9.0, [2.0], channels=2)}.items():
        (tmp_path / name).mkdir()
        save_model(tmp_path / name / "model", m)
        (tmp_path / name / catalog.CARD).write_text(json.dumps({"task": name, "data": "-"}))
    return tmp_path


@pytest.fixture
def scan() -> np.ndarray:
    """A smooth 24^3 (x, y, z) volume with faint noise, like a small clean scan."""
    rng = np.random.default_rng(0)
    smooth = scipy.ndimage.gaussian_filter(rng.random((24, 24, 24)), 2.0)
    return (100 * smooth / smooth.max() + rng.normal(0, 0.2, smooth.shape)).astype(np.float32)


def test_candidates_are_the_monomodal_models_trained_for_the_scale(shelf):
    assert [s.name for s in auto_model.candidates((2, 2, 2), shelf)] == ["better-x2",
                                                                         "worse-x2"]


def test_a_model_predicted_to_gain_is_kept_without_checking_others(shelf, scan, fake_check):
    choice = auto_model.choose(_model(0.5, [2.0]), scan, (2, 2, 2), root=shelf)
    assert (choice.name, choice.why, choice.gains, fake_check) == (None, None,
                                                                   {"asked": 0.5}, [0.5])


def test_a_model_predicted_to_lose_is_replaced_by_the_best_shipped_one(shelf, scan,
                                                                       fake_check):
    choice = auto_model.choose(_model(-2.0, [2.0]), scan, (2, 2, 2), root=shelf)
    assert choice.name == "better-x2"
    assert float(choice.model.params["conv2"]["bias"][0]) == 1.0
    assert choice.why == "predicted 2.00 dB behind cubic spline"
    assert choice.gains == {"asked": -2.0, "better-x2": 1.0, "worse-x2": -3.0}


def test_the_asked_model_stays_when_no_shipped_one_predicts_more(shelf, scan, fake_check):
    choice = auto_model.choose(_model(2.0, [3.0]), scan, (2, 2, 2), root=shelf)
    assert (choice.name, choice.gains) == (None, {"asked": 2.0, "better-x2": 1.0,
                                                  "worse-x2": -3.0})


def test_the_asked_model_is_not_checked_twice_when_it_is_shipped(shelf, scan, fake_check):
    asked = load_model(shelf / "worse_x2" / "model")
    choice = auto_model.choose(asked, scan, (2, 2, 2), root=shelf)
    assert (choice.name, fake_check) == ("better-x2", [-3.0, 1.0])


def test_a_model_not_trained_for_the_scale_is_replaced_even_when_it_gains(shelf, scan,
                                                                          fake_check):
    choice = auto_model.choose(_model(0.5, [3.0]), scan, (2, 2, 2), root=shelf)
    assert (choice.name, choice.why) == ("better-x2", "not trained for scale (2, 2, 2)")


def test_facts_name_the_choice_and_every_predicted_gain(shelf, scan, fake_check):
    facts = auto_model.choose(_model(-2.0, [2.0]), scan, (2, 2, 2), root=shelf).facts()
    assert facts == {"chosen": "better-x2", "why": "predicted 2.00 dB behind cubic spline",
                     "gains_db": {"asked": -2.0, "better-x2": 1.0, "worse-x2": -3.0}}


def test_the_real_self_check_replaces_a_wild_residual_by_a_zero_one(tmp_path, scan):
    """Without the fake: a large residual is predicted behind spline, a zero one level
    with it (to 1e-3 dB: its output is the spline zoom), so the zero one is taken."""
    (tmp_path / "level_x2").mkdir()
    save_model(tmp_path / "level_x2" / "model", _model(0.0, [2.0]))
    (tmp_path / "level_x2" / catalog.CARD).write_text('{"task": "-", "data": "-"}')
    wild = _model(0.0, [2.0])
    wild.params["conv2"] = {k: v + 0.5 for k, v in wild.params["conv2"].items()}
    choice = auto_model.choose(wild, scan, (2, 2, 2), root=tmp_path)
    assert choice.gains["asked"] < -1.0
    assert abs(choice.gains["level-x2"]) < 1e-3
    assert choice.name == "level-x2"
