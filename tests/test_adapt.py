"""``srrecnn sr --adapt``: fine-tuning a thick-slice model on the scan itself (pairs from
its in-plane axes, a wall-clock budget, a held-out check), ``--slice-thickness`` and
``--save-adapted``; and nothing changed without ``--adapt``. In batch mode each scan is
fine-tuned on for itself, its facts in its row; a scan that cannot be is one failed
job."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import SimpleITK as sitk
from test_batch import manifest, run_cli

from srrecnn_jax import config, model
from srrecnn_jax.adapt import (
    AdaptResult,
    AdaptSettings,
    BestCheck,
    Pair,
    adapt,
    draw_patches,
    make_pairs,
)
from srrecnn_jax.batch import pipeline
from srrecnn_jax.batch.resume import changed_facts, job_facts
from srrecnn_jax.checkpoint import LoadedModel, load_model
from srrecnn_jax.cli import common, main
from srrecnn_jax.degradation import degrade, degrade_image, slice_profile
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import to_array, to_image
from srrecnn_jax.inference import prepare_array, super_resolve_array
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.jobs import Job


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


def test_adapted_weights_that_beat_the_start_by_less_than_the_margin_are_dropped(thick):
    """The same run as above, with a margin no fine-tuning reaches: the start is used."""
    start = harmful()
    result = adapt(start, thick[0], (1, 1, 4),
                   settings=AdaptSettings(seconds=30, learning_rate=1e-2, algorithm="xla",
                                          keep_margin_db=1000.0))
    db = result.heldout_psnr
    assert result.steps > 0 and db["adapted"] > db["start"]
    assert not result.kept and result.model is start


def test_the_best_held_out_check_is_kept_not_the_last_weights():
    """Checks at steps 10, 20, 30 scoring 31, 33, 32 dB: step 20's weights are the result."""
    scores = iter([31.0, 33.0, 32.0])
    best = BestCheck(30.0, {"w": 0}, 0, lambda trained: next(scores), interval=0.0, cost=0.0)
    for step in (10, 20, 30):
        best.check({"w": step}, step)
    assert (best.db, best.trained, best.step, best.checked) == (33.0, {"w": 20}, 20, 30)


def test_a_check_is_due_only_when_it_ends_before_the_deadline():
    best = BestCheck(30.0, {}, 0, lambda trained: 0.0, interval=0.0, cost=5.0)
    now = time.perf_counter()
    assert best.due(now + 60) and not best.due(now + 1)


def test_the_adapted_held_out_psnr_is_the_best_check_never_below_the_start(thick):
    result = adapt(harmful(), thick[0], (1, 1, 4),
                   settings=AdaptSettings(seconds=20, learning_rate=1e-2, algorithm="xla",
                                          check_every=0.0))
    db = result.heldout_psnr
    assert 0 <= result.best_step <= result.steps and db["adapted"] >= db["start"]
    assert result.adapted.origin["best_step"] == result.best_step


def test_max_steps_caps_the_steps_made(thick):
    result = adapt(harmful(), thick[0], (1, 1, 4),
                   settings=AdaptSettings(seconds=60, learning_rate=1e-2, algorithm="xla",
                                          max_steps=3))
    assert result.steps == 3


def test_a_stop_request_ends_the_fine_tuning_at_the_next_step(thick):
    """``stop`` is asked before every step: True at its third asking (the first is before
    the loop) ends the run after one step, long before the budget."""
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 3

    result = adapt(harmful(), thick[0], (1, 1, 4), stop=stop,
                   settings=AdaptSettings(seconds=120, learning_rate=1e-2, algorithm="xla"))
    assert (result.steps, len(asked)) == (1, 3)


def half_air_pair() -> Pair:
    """A 40^3 pair whose first half along x is air (0) and second half tissue (0.5 to 1)."""
    target = np.zeros((40, 40, 40), np.float32)
    target[20:] = np.random.default_rng(1).uniform(0.5, 1.0, (20, 40, 40))
    return Pair(target[..., None].copy(), target, 1.0, (0, 1, 2), 0)


def test_patches_of_air_are_drawn_again():
    """With ``floor`` 0.1 every 8^3 patch of a half-air scan has a target mean of at least
    0.1; without it, some of 64 are (almost) all air."""
    pair = half_air_pair()
    rng = np.random.default_rng(0)
    _, anywhere = draw_patches([pair], 2, 40, (8, 8, 8), 64, rng)
    _, tissue = draw_patches([pair], 2, 40, (8, 8, 8), 64, rng, floor=0.1)
    assert anywhere.mean(axis=(1, 2, 3, 4)).min() < 0.1
    assert tissue.mean(axis=(1, 2, 3, 4)).min() >= 0.1


def test_a_fixed_number_of_steps_gives_the_same_weights_twice(thick):
    settings = AdaptSettings(seconds=60, learning_rate=1e-2, algorithm="xla", max_steps=4,
                             renew_every=1, keep_margin_db=-1000.0, check_every=1e9)
    first, second = (adapt(harmful(), thick[0], (1, 1, 4), settings=settings)
                     for _ in range(2))
    assert first.best_step == second.best_step == 4
    for name in ("conv2", "conv3"):
        np.testing.assert_array_equal(first.adapted.params[name]["kernel"],
                                      second.adapted.params[name]["kernel"])


def test_renewing_the_pool_trains_on_new_patches(thick):
    """Same seed and steps, a pool of 8 patches: renewing it after every step (8 new ones)
    changes what the later steps learn from, so the weights differ from one pool's."""
    common = dict(seconds=60, learning_rate=1e-2, algorithm="xla", max_steps=4, pool=8,
                  keep_margin_db=-1000.0, check_every=1e9)
    fixed, renewed = (adapt(harmful(), thick[0], (1, 1, 4),
                            settings=AdaptSettings(renew_every=r, **common)) for r in (0, 1))
    assert fixed.steps == renewed.steps == 4
    assert not np.array_equal(fixed.adapted.params["conv3"]["kernel"],
                              renewed.adapted.params["conv3"]["kernel"])


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


# --- batch mode: each scan fine-tuned on its own ---------------------------------------------

@pytest.fixture
def two_thick(thick, tmp_path) -> Path:
    """A folder of two thick-slice scans: the 2 x 2 x 8 mm one, and the same with y and z
    swapped (slices along y)."""
    lr = sitk.ReadImage(str(thick[1]))
    swapped = to_image(to_array(lr).transpose(0, 2, 1).copy(),
                       tuple(np.array(lr.GetSpacing())[[0, 2, 1]]), lr.GetOrigin(),
                       (1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(lr, str(folder / "z.nii.gz"))
    sitk.WriteImage(swapped, str(folder / "y.nii.gz"))
    return folder


def test_batch_adapt_writes_each_output_with_its_own_adapt_facts(two_thick, models,
                                                                 tmp_path):
    """``--isotropic --adapt 3``: each scan is fine-tuned on for itself; its row has the
    facts (held-out PSNRs, kept, steps, seconds, its slice profile) and the budget among
    the facts that made the output."""
    out = tmp_path / "out"
    code, _, err = run_cli(two_thick, "--out-dir", out, "-m", models["mono"], "--isotropic",
                           "--adapt", "3")
    assert code == 0, err
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert sorted(rows) == ["y.nii.gz", "z.nii.gz"]
    for name, row in rows.items():
        assert row["status"] == "ok" and (out / name.replace(".nii", "_SR.nii")).is_file()
        facts = row["adapt"]
        assert set(facts["heldout_psnr"]) == {"spline", "start", "adapted"}
        assert isinstance(facts["kept"], bool) and facts["steps"] >= 0
        assert facts["seconds"] > 0  # the budget: test_the_budget_is_respected_...
        spacing = sitk.ReadImage(str(two_thick / name)).GetSpacing()
        assert facts["fwhm_voxels"] == pytest.approx(max(spacing) / min(spacing), rel=1e-3)
        assert (row["job"]["adapt"], row["job"]["slice_thickness"]) == (3, None)


def test_batch_runs_each_job_with_its_own_adapted_weights_if_kept(two_thick, models,
                                                                 tmp_path, monkeypatch):
    """Fine-tuning (stood in for: a fixed result per scan) that keeps other weights for
    ``z`` and drops them for ``y``: ``z``'s output is those weights' on ``z``, ``y``'s the
    model's own on ``y``, whatever device or order the jobs took."""
    other = harmful(0.02)

    def fine_tuned(loaded, lr, factors, fwhm, settings, **kwargs) -> AdaptResult:
        kept = factors[2] > 1  # z: slices along z
        return AdaptResult(other if kept else loaded, other, kept, 0.1, 1,
                           {"spline": 1.0, "start": 2.0, "adapted": 3.0 if kept else 1.5},
                           fwhm)

    monkeypatch.setattr(pipeline, "adapt", fine_tuned)
    out = tmp_path / "out"
    code, _, err = run_cli(two_thick, "--out-dir", out, "-m", models["mono"], "--isotropic",
                           "--adapt", "3", "--exact")
    assert code == 0, err
    mono = load_model(models["mono"])
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    for name, used in (("z", other), ("y", mono)):
        lr = to_array(sitk.ReadImage(str(two_thick / f"{name}.nii.gz")))
        expected = super_resolve_array(used.params, used.config, lr, rows[f"{name}.nii.gz"]
                                       ["scale"], exact=True)
        got = to_array(sitk.ReadImage(str(out / f"{name}_SR.nii.gz")))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * float(expected.max()))
    assert (rows["z.nii.gz"]["adapt"]["kept"], rows["y.nii.gz"]["adapt"]["kept"]) == (
        True, False)


def test_ctrl_c_during_batch_fine_tuning_stops_it_and_writes_nothing(two_thick, models,
                                                                    tmp_path, monkeypatch):
    """Ctrl-C while a scan is fine-tuned on reaches the fine-tuning (its ``stop`` turns
    True) instead of waiting out the budget; that job's output is not written and every
    job is left as not started, for a rerun."""
    seen = []

    def fine_tuned(loaded, lr, factors, fwhm, settings, stop, **kwargs) -> AdaptResult:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 20
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(stop())
        return AdaptResult(loaded, loaded, False, 0.1, 0,
                           {"spline": 1.0, "start": 2.0, "adapted": 2.0}, fwhm)

    monkeypatch.setattr(pipeline, "adapt", fine_tuned)
    out = tmp_path / "out"
    code, _, err = run_cli(two_thick, "--out-dir", out, "-m", models["mono"], "--isotropic",
                           "--adapt", "600", "--workers", "1")
    assert code == 130, err
    assert seen == [True]
    assert list(out.glob("*_SR.nii.gz")) == []
    assert [r["status"] for r in manifest(out)] == ["not-started", "not-started"]


def test_batch_adapt_a_scan_too_small_to_fine_tune_on_is_one_error_row(thick, models,
                                                                      tmp_path):
    """3 voxels along x leave no voxel to degrade by 4: that input fails alone (its row
    names the scale), the other is written."""
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(thick[1])), str(folder / "good.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(thick[1]))[:3], str(folder / "thin.nii.gz"))
    out = tmp_path / "out"
    code, _, err = run_cli(folder, "--out-dir", out, "-m", models["mono"], "-s", "1,1,4",
                           "--adapt", "2")
    assert code == 1
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert rows["good.nii.gz"]["status"] == "ok" and rows["good.nii.gz"]["adapt"]
    assert rows["thin.nii.gz"]["status"] == "error"
    assert rows["thin.nii.gz"]["parameter"] == "scale"
    assert str(folder / "thin.nii.gz") in rows["thin.nii.gz"]["error"]
    assert [line for line in err.splitlines() if line.startswith("srrecnn: error:")] == [
        f"srrecnn: error: {common.job_error_line(rows['thin.nii.gz']['error'], 'scale')}"]


def test_save_adapted_in_batch_mode_is_refused(thick, models, tmp_path, capsys):
    code = main(["sr", str(thick[1]), "--out-dir", str(tmp_path / "o"),
                 "-m", str(models["mono"]), "-s", "1,1,4", "--adapt", "3",
                 "--save-adapted", str(tmp_path / "adapted")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("srrecnn: error: --save-adapted: ")
    assert list(tmp_path.iterdir()) == []


def test_batch_adapt_at_a_scale_without_one_thick_axis_is_refused_before_any_work(
        thick, models, tmp_path, capsys):
    """``-s 2 --adapt``: every scan would fail; one error line naming -s/--scale."""
    code = main(["sr", str(thick[1]), "--out-dir", str(tmp_path / "o"),
                 "-m", str(models["mono"]), "-s", "2", "--adapt", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("srrecnn: error: -s/--scale: ")
    assert not (tmp_path / "o").exists()


def test_a_rerun_redoes_an_output_made_with_another_adapt_budget_or_slice_thickness():
    """The budget and the slice thickness are facts of an output (fine-tuning changes
    its voxels); outputs made without --adapt record neither."""
    job, options = Job(Path("in.nii.gz"), Path("out.nii.gz")), InferenceOptions((1, 1, 4))
    plain = job_facts(job, options, "m")
    three = job_facts(job, options, "m", adapt=3.0)
    assert "adapt" not in plain and changed_facts(plain, plain) == []
    assert changed_facts(plain, three) == ["adapt was off, now 3"]
    assert changed_facts(three, plain) == ["adapt was 3, now off"]
    assert changed_facts(three, job_facts(job, options, "m", adapt=3.0,
                                          slice_thickness=6.0)) == [
        "slice_thickness was the slice spacing, now 6"]


def test_without_adapt_the_output_is_super_resolve_array(thick, models, tmp_path):
    """``sr -s 1,1,4`` without the new options: the pipeline on the array, unchanged."""
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(thick[1]), "-o", str(out), "-m", str(models["mono"]),
                 "-s", "1,1,4"]) == 0
    loaded = load_model(models["mono"])
    expected = super_resolve_array(loaded.params, loaded.config,
                                   to_array(sitk.ReadImage(str(thick[1]))), (1, 1, 4))
    np.testing.assert_array_equal(to_array(sitk.ReadImage(str(out))), expected)


@pytest.mark.parametrize(("field", "value"), [("renew_every", -1), ("max_steps", -5),
                                              ("foreground", 1.0), ("foreground", -0.1),
                                              ("max_steps", 2.5), ("pool", 0),
                                              ("learning_rate", float("nan")),
                                              ("heldout", 1.0)])
def test_bad_settings_are_refused_naming_them(field, value):
    with pytest.raises(SrrecnnError, match=f"AdaptSettings.{field} must be"):
        AdaptSettings(**{field: value})


def test_a_budget_of_no_time_is_refused_as_the_adapt_option():
    with pytest.raises(SrrecnnError, match="above 0 seconds") as info:
        AdaptSettings(seconds=0.0)
    assert info.value.parameter == "adapt"
