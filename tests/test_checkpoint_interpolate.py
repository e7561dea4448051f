"""checkpoints/scripts/interpolate.py: the weight-space average of a fine-tuned model and the
weights it started from (WiSE-FT), written as a model folder that records both."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import checkpoints_script

from srrecnn_jax import config, model
from srrecnn_jax.checkpoint import LoadedModel, fingerprint, load_model, save_model


@pytest.fixture(scope="module")
def interpolate():
    return checkpoints_script("interpolate")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny 'start' model and a 'fine-tuned' one of the same architecture (other random
    weights, a fine-tuning provenance and trained scales), saved as folders."""
    root = tmp_path_factory.mktemp("interpolate")
    cfg = config.tiny()
    start = save_model(root / "start", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    tuned = LoadedModel(model.init(jax.random.PRNGKey(1), cfg), cfg, trained_scales=[2.0],
                        origin={"kind": "srrecnn-jax fine-tuning", "step": 7,
                                "fine_tuned_from": {"licence": "CeCILL-B"}})
    return start, save_model(root / "tuned", tuned)


def _leaves(path):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(load_model(path).params)]


@pytest.mark.parametrize("alpha, source", [(0.0, 0), (1.0, 1)])
def test_alpha_0_and_1_give_either_model_bitwise(interpolate, pair, tmp_path, alpha, source):
    out = tmp_path / "model"
    interpolate.main([str(pair[0]), str(pair[1]), str(out), "--alpha", str(alpha)])
    for written, expected in zip(_leaves(out), _leaves(pair[source])):
        np.testing.assert_array_equal(written, expected)


def test_alpha_half_is_the_mean_of_the_two_rounded_once_to_float32(interpolate, pair,
                                                                    tmp_path):
    """Computed in float64 and stored as float32: equal to the float64 mean rounded
    once (exactly), so that the average does not depend on the order of operations."""
    out = tmp_path / "model"
    interpolate.main([str(pair[0]), str(pair[1]), str(out)])
    changed = []
    for written, a, b in zip(_leaves(out), _leaves(pair[0]), _leaves(pair[1])):
        expected = ((a.astype(np.float64) + b.astype(np.float64)) / 2).astype(np.float32)
        np.testing.assert_array_equal(written, expected)
        changed.append(not np.array_equal(written, a))
    assert sum(changed) == 3  # the kernels (random); the biases start at zero in both


def test_the_folder_records_alpha_both_sources_and_the_fine_tuned_models_facts(
        interpolate, pair, tmp_path):
    out = tmp_path / "model"
    interpolate.main([str(pair[0]), str(pair[1]), str(out), "--alpha", "0.25"])
    meta = json.loads((out / "config.json").read_text())
    origin = meta["origin"]
    assert origin["alpha"] == 0.25
    assert origin["start"]["fingerprint"] == fingerprint(load_model(pair[0]))
    assert origin["fine_tuned"]["fingerprint"] == fingerprint(load_model(pair[1]))
    assert origin["fine_tuned"]["origin"]["step"] == 7
    assert origin["fine_tuned_from"] == {"licence": "CeCILL-B"}
    assert meta["trained_scales"] == [2.0]


def test_other_architectures_are_one_error_naming_both_models_and_nothing_is_written(
        interpolate, pair, tmp_path, capsys):
    wider = config.recnn(layers=3, filters=8, kernel=3, in_channels=1)
    other = save_model(tmp_path / "other",
                       LoadedModel(model.init(jax.random.PRNGKey(2), wider), wider))
    with pytest.raises(SystemExit) as stop:
        interpolate.main([str(pair[0]), str(other), str(tmp_path / "model")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{pair[0]}, {other}: the architectures differ" in err
    assert not (tmp_path / "model").exists()


def test_an_alpha_outside_0_to_1_is_refused(interpolate, pair, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        interpolate.main([str(pair[0]), str(pair[1]), str(tmp_path / "model"),
                          "--alpha", "1.5"])
    assert stop.value.code == 2
    assert "--alpha: 1.5 is not between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_an_input_is_never_the_output(interpolate, pair, capsys):
    before = fingerprint(load_model(pair[1]))
    with pytest.raises(SystemExit) as stop:
        interpolate.main([str(pair[0]), str(pair[1]), str(pair[1])])
    assert stop.value.code == 2
    assert f"{pair[1]}: is an input" in capsys.readouterr().err
    assert fingerprint(load_model(pair[1])) == before


def test_info_names_the_average_and_its_alpha(interpolate, pair, tmp_path, capsys):
    from srrecnn_jax import cli

    out = tmp_path / "model"
    interpolate.main([str(pair[0]), str(pair[1]), str(out), "--alpha", "0.25"])
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    origin = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("origin:")]
    assert origin == ["origin:          srrecnn-jax weight interpolation (WiSE-FT), "
                      "alpha 0.25 of the fine-tuned weights"]


def test_a_missing_model_is_one_error_line_naming_it(interpolate, pair, tmp_path, capsys):
    missing = tmp_path / "absent.caffemodel"
    with pytest.raises(SystemExit) as stop:
        interpolate.main([str(missing), str(pair[1]), str(tmp_path / "model")])
    assert stop.value.code == 2
    assert f"{missing}: no such model file" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "model").exists()


def test_a_run_folder_is_never_the_output(interpolate, pair, tmp_path, capsys):
    """``interpolate.py run/model other/model run`` replaced the run folder (checkpoints,
    metrics): refused, the run as it was."""
    run = tmp_path / "run"
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "train_config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 4}\n')
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        interpolate.main([str(pair[0]), str(pair[1]), str(run)])
    assert stop.value.code == 2
    assert "training run" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
