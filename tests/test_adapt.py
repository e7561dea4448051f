"""``srrecnn sr --adapt``: fine-tuning a thick-slice model on the scan itself (pairs from
its in-plane axes, a wall-clock budget, a held-out check), ``--slice-thickness`` and
``--save-adapted``; and nothing changed without ``--adapt``."""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import pytest
import SimpleITK as sitk

from srrecnn_jax import config, model
from srrecnn_jax.adapt import AdaptSettings, adapt, make_pairs
from srrecnn_jax.checkpoint import LoadedModel, load_model
from srrecnn_jax.cli import main
from srrecnn_jax.degradation import degrade, degrade_image, slice_profile
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import prepare_array, super_resolve_array


@pytest.fixture
def thick(anatomical_path, tmp_path_factory):
    """nibabel's real 2 mm T1 (33 x 41 x 25) degraded to 1 x 1 x 4 by the slice profile:
    33 x 41 x 6 voxels of 2 x 2 x 8 mm, as an array and as a file."""
    image = sitk.ReadImage(str(anatomical_path), sitk.sitkFloat32)
    lr = degrade_image(image, (1, 1, 4), slice_profile((1, 1, 4)))["lr"]
    path = tmp_path_factory.mktemp("adapt") / "thick.nii.gz"
    sitk.WriteImage(lr, str(path))
    return to_array(lr), path


def harmful(offset: float = 0.05) -> LoadedModel:
    """A tiny residual model whose last bias adds ``offset`` (of the input's maximum) to
    every voxel: worse than spline, and what fine-tuning can undo."""
    cfg = config.tiny()
    params = model.init(jax.random.PRNGKey(0), cfg)
    last = params["conv3"]
    last["kernel"], last["bias"] = last["kernel"] / 100, last["bias"] / 100 + offset
    return LoadedModel(params, cfg)


@pytest.mark.parametrize("thick_axis", [2, 1])
def test_each_pair_degrades_an_inplane_axis_onto_the_slice_axis_with_the_scan_as_target(
        thick, thick_axis):
    """For a z-slice model, each in-plane axis in turn is degraded (training's blur, crop
    and spline) and put on z, the scan's thick axis where it was; the target is the scan
    (cropped along the degraded axis) over the input's maximum, the input the degraded
    scan as inference prepares it."""
    lr = np.ascontiguousarray(np.swapaxes(thick[0], 2, thick_axis))
    factors = [1.0, 1.0, 1.0]
    factors[thick_axis] = 4.0
    cfg = config.tiny()
    pairs = make_pairs(cfg, lr, factors, trained_scales=[[1, 1, 4]])
    assert sorted(p.degraded for p in pairs) == [a for a in range(3) if a != thick_axis]
    for pair in pairs:
        a = pair.degraded
        assert pair.axes[2] == a and thick_axis in pair.axes and sorted(pair.axes) == [0, 1, 2]
        scale, sigma = [1, 1, 1], [0, 0, 0]
        scale[a], sigma[a] = 4, slice_profile([4])[0]
        low, truth = degrade(lr, scale, sigma)
        assert truth.shape[a] == 4 * low.shape[a] and truth.shape[a] > lr.shape[a] - 4
        np.testing.assert_allclose(pair.target * np.float32(pair.top),
                                   truth.transpose(pair.axes), rtol=2e-7)
        expected = prepare_array(cfg, low, [c / n for c, n in zip(truth.shape, low.shape)])
        assert pair.top == expected.top
        np.testing.assert_array_equal(pair.volume, expected.volume.transpose(pair.axes + (3,)))


def test_a_non_integer_factor_gives_pairs_whose_input_and_target_align(thick):
    """x4.6 along z (what --isotropic gives for 2 x 2 x 9.2 mm): the zoom back restores
    each cropped length exactly."""
    for pair in make_pairs(config.tiny(), thick[0], (1, 1, 4.6)):
        assert pair.volume.shape == pair.target.shape + (1,)
        length = pair.target.shape[pair.axes.index(pair.degraded)]
        assert thick[0].shape[pair.degraded] - 5.6 < length <= thick[0].shape[pair.degraded]


def test_the_budget_is_respected_compilation_included(thick):
    """3 s: the whole adaptation, compilations included, ends within 10% + 5 s of it."""
    begin = time.perf_counter()
    result = adapt(harmful(), thick[0], (1, 1, 4), settings=AdaptSettings(seconds=3))
    wall = time.perf_counter() - begin
    # + 5 s: a compilation in flight at the deadline cannot be cut short, and on a loaded
    # 2-core machine a tiny model's takes seconds.
    assert result.seconds <= 3 * 1.1 + 5 and wall <= 3 * 1.1 + 5


def test_adapted_weights_are_kept_when_they_beat_the_start_on_held_out_slices(thick):
    # 30 s: on a 2-core machine whose other core runs tests, compiling the step alone can
    # take most of 8 s (CI made no step then).
    result = adapt(harmful(), thick[0], (1, 1, 4),
                   settings=AdaptSettings(seconds=30, learning_rate=1e-2, algorithm="xla"))
    db = result.heldout_psnr
    assert result.steps > 0 and result.kept and db["adapted"] > db["start"]
    assert result.model is result.adapted and result.adapted.origin["kept"]


def test_the_start_is_kept_when_adaptation_cannot_beat_it(thick):
    """A learning rate of 0 changes nothing: no step, the start model is used."""
    start = harmful()
    result = adapt(start, thick[0], (1, 1, 4),
                   settings=AdaptSettings(seconds=5, learning_rate=0.0))
    assert result.steps == 0 and not result.kept and result.model is start
    assert result.heldout_psnr["adapted"] == result.heldout_psnr["start"]


def test_json_and_stderr_carry_the_held_out_numbers(thick, models, tmp_path, capsys):
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(thick[1]), "-o", str(out), "-m", str(models["mono"]),
                 "-s", "1,1,4", "--adapt", "3", "--json"]) == 0
    captured = capsys.readouterr()
    facts = json.loads(captured.out)["adapt"]
    assert set(facts["heldout_psnr"]) == {"spline", "start", "adapted"}
    assert isinstance(facts["kept"], bool) and facts["steps"] >= 0 and facts["seconds"] > 0
    spacing = sitk.ReadImage(str(thick[1])).GetSpacing()  # the slice spacing over in-plane
    assert facts["fwhm_voxels"] == pytest.approx(spacing[2] / spacing[0], rel=1e-3)
    assert "held-out PSNR" in captured.err and out.is_file()


def test_save_adapted_writes_a_loadable_model_folder_and_refuses_an_existing_one(
        thick, models, tmp_path, capsys):
    saved = tmp_path / "adapted"
    command = ["sr", str(thick[1]), "-m", str(models["mono"]), "--isotropic",
               "--adapt", "2", "--save-adapted", str(saved)]
    assert main(command + ["-o", str(tmp_path / "a.nii.gz")]) == 0
    loaded = load_model(saved)
    assert loaded.config == config.tiny() and loaded.origin["kind"] == "adapted"
    capsys.readouterr()
    assert main(command + ["-o", str(tmp_path / "b.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.nii.gz").exists()


@pytest.mark.parametrize("extra, option", [
    (["--adapt", "0"], "--adapt"),
    (["--adapt", "-1"], "--adapt"),
    (["--adapt", "3", "--slice-thickness", "0"], "--slice-thickness"),
    (["--slice-thickness", "8"], "--slice-thickness"),
    (["--save-adapted", "m"], "--save-adapted"),
    (["--adapt", "3", "--no-residual"], "--adapt"),
])
def test_bad_values_are_one_error_line_naming_the_option(thick, models, tmp_path, capsys,
                                                         extra, option):
    out = tmp_path / "sr.nii.gz"
    try:
        code = main(["sr", str(thick[1]), "-o", str(out), "-m", str(models["mono"]),
                     "-s", "1,1,4"] + extra)
    except SystemExit as stop:  # the parser's own errors: exit status 2
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and option in err[0]
    assert list(tmp_path.iterdir()) == []


def test_adapt_in_batch_mode_is_refused(thick, models, tmp_path, capsys):
    code = main(["sr", str(thick[1]), "--out-dir", str(tmp_path / "o"),
                 "-m", str(models["mono"]), "-s", "1,1,4", "--adapt", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--adapt" in err[0]
    assert not (tmp_path / "o").exists()


def test_without_adapt_the_output_is_super_resolve_array(thick, models, tmp_path):
    """``sr -s 1,1,4`` without the new options: the pipeline on the array, unchanged."""
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(thick[1]), "-o", str(out), "-m", str(models["mono"]),
                 "-s", "1,1,4"]) == 0
    loaded = load_model(models["mono"])
    expected = super_resolve_array(loaded.params, loaded.config,
                                   to_array(sitk.ReadImage(str(thick[1]))), (1, 1, 4))
    np.testing.assert_array_equal(to_array(sitk.ReadImage(str(out))), expected)
