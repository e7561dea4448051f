"""The data-consistency projection (``sr --acquisition``): the output, acquired again the
way the input was, gives the input back; ``none`` leaves the release's output alone.

The volumes are crops of nibabel's real 2 mm T1 (``anatomical``), acquired at x2 by
``degradation.observe``.
"""

from __future__ import annotations

import numpy as np
import pytest

from srrecnn_jax import catalog
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.cli import main
from srrecnn_jax.consistency import axis_operators, project
from srrecnn_jax.degradation import observe
from srrecnn_jax.evaluation import spline_baseline
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.metrics import psnr


@pytest.fixture
def truth(anatomical) -> np.ndarray:
    """A 32 x 40 x 24 block of the real scan, float64 (x, y, z)."""
    return to_array(anatomical, np.float64)[:32, :40, :24]


def reacquired(volume: np.ndarray, lr_shape: tuple, acquisition: str) -> np.ndarray:
    """``volume`` acquired again onto ``lr_shape`` (the ``A`` of ``consistency``)."""
    out = volume
    for axis, m in enumerate(lr_shape):
        a, _ = axis_operators(out.shape[axis], m, acquisition, 0.0)
        out = np.moveaxis(np.tensordot(a, out, axes=([1], [axis])), 0, axis)
    return out


@pytest.mark.parametrize("acquisition", ["kspace", "gaussian", "slice_profile"])
def test_exact_projection_gives_the_input_back(truth, acquisition):
    """With ``lam = 0`` the re-acquired output equals the input to 1e-4 of its maximum
    (float32 arithmetic)."""
    lr, cropped = observe(truth, (2, 2, 2), psf="kspace")
    start = spline_baseline(lr, cropped.shape) * 1.3
    out = project(start, lr, acquisition, 0.0)
    back = reacquired(out.astype(np.float64), lr.shape, acquisition)
    assert np.max(np.abs(back - lr)) < 1e-4 * lr.max()


def test_a_consistent_output_is_left_alone(truth):
    """An output that already gives the input back is not changed (to float32
    rounding), whatever ``lam``."""
    lr = reacquired(truth, (16, 20, 12), "kspace")
    out = project(truth, lr, "kspace", 0.3)
    assert np.max(np.abs(out - truth)) < 1e-4 * truth.max()


def test_none_returns_the_output_itself(truth):
    lr, cropped = observe(truth, (2, 2, 2), psf="kspace")
    assert project(cropped, lr, "none") is cropped


def test_larger_lambda_moves_the_output_less(truth):
    lr, cropped = observe(truth, (2, 2, 2), psf="kspace")
    start = spline_baseline(lr, cropped.shape) * 1.3
    moves = [np.abs(project(start, lr, "kspace", lam) - start).mean()
             for lam in (0.0, 0.3, 3.0)]
    assert moves[0] > moves[1] > moves[2] > 0


def test_kspace_projection_mends_a_gaussian_model_on_a_kspace_scan(truth):
    """``mono-x2`` (trained on the release's Gaussian blur) over-sharpens a scanner's
    k-space acquisition; made consistent with it, its output is closer to the truth by
    more than 1 dB (PSNR, peak the truth's maximum)."""
    loaded = load_model(catalog.locate("mono-x2"))
    lr, cropped = observe(truth, (2, 2, 2), psf="kspace")
    plain = super_resolve_array(loaded.params, loaded.config, lr, 2)
    mended = super_resolve_array(loaded.params, loaded.config, lr, 2, acquisition="kspace")
    peak = float(cropped.max())
    assert psnr(mended, cropped, peak) > psnr(plain, cropped, peak) + 1.0


def test_slice_profile_leaves_thin_axes_to_the_network(truth):
    """At 1x1x4 the slice profile acts along z only (the x operator is the identity),
    and the exact projection gives the thick-slice input back to 1e-4 of its maximum."""
    lr, cropped = observe(truth, (1, 1, 4), sigma=(0, 0, 4 / 2.3548))
    start = spline_baseline(lr, cropped.shape)
    out = project(start, lr, "slice_profile", 0.0)
    back = reacquired(out.astype(np.float64), lr.shape, "slice_profile")
    assert np.max(np.abs(back - lr)) < 1e-4 * lr.max()
    a_x, _ = axis_operators(cropped.shape[0], lr.shape[0], "slice_profile", 0.0)
    assert np.array_equal(a_x, np.eye(cropped.shape[0]))


def test_slice_profile_mends_thick_slice_on_thick_slices(truth):
    """``thick-slice`` at 1x1x4 (Gaussian slice profile, no noise), made consistent
    with its input (``lam`` 0): closer to the truth by more than 0.2 dB."""
    loaded = load_model(catalog.locate("thick-slice"))
    lr, cropped = observe(truth, (1, 1, 4), sigma=(0, 0, 4 / 2.3548))
    plain = super_resolve_array(loaded.params, loaded.config, lr, (1, 1, 4))
    mended = super_resolve_array(loaded.params, loaded.config, lr, (1, 1, 4),
                                 acquisition="slice_profile", consistency=0.0)
    peak = float(cropped.max())
    assert psnr(mended, cropped, peak) > psnr(plain, cropped, peak) + 0.2


@pytest.mark.parametrize(("field", "value"), [("acquisition", "scanner"),
                                              ("consistency", -1.0),
                                              ("consistency", float("nan"))])
def test_bad_settings_are_refused_naming_them(field, value):
    with pytest.raises(Exception, match="must be") as info:
        InferenceOptions(2, **{field: value})
    assert info.value.parameter == field


def test_consistency_without_an_acquisition_is_refused():
    """``--consistency`` alone would change nothing: an error naming it, not a no-op."""
    with pytest.raises(Exception, match="acquisition") as info:
        InferenceOptions(2, consistency=0.1)
    assert info.value.parameter == "consistency"


def test_cli_bad_consistency_is_one_line_naming_the_option(anatomical, tmp_path, capsys):
    import SimpleITK as sitk

    sitk.WriteImage(anatomical, str(tmp_path / "lr.nii.gz"))
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "-o", str(out), "-m", "mono-x2",
                 "-s", "2", "--acquisition", "kspace", "--consistency", "-1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--consistency" in err
    assert not out.exists()


def test_batch_manifest_records_the_acquisition(anatomical, tmp_path):
    import json

    import SimpleITK as sitk

    sitk.WriteImage(anatomical, str(tmp_path / "lr.nii.gz"))
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "--out-dir", str(tmp_path / "out"),
                 "-m", "mono-x2", "-s", "2", "--quiet", "--acquisition", "kspace"]) == 0
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "srrecnn_manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["job"]["acquisition"] == "kspace"


def test_self_check_makes_the_projection_the_run_makes(anatomical):
    """The self-check restores its re-acquisition as the run would: with
    ``acquisition="kspace"`` on a k-space re-acquisition, ``mono-x2``'s predicted gain
    rises (the projection mends its over-sharpening there too)."""
    from srrecnn_jax.guardrails import self_check_gain_db

    loaded = load_model(catalog.locate("mono-x2"))
    lr = to_array(anatomical, np.float32)
    plain = self_check_gain_db(loaded.params, loaded.config, lr, (2, 2, 2), psf="kspace")
    mended = self_check_gain_db(loaded.params, loaded.config, lr, (2, 2, 2), psf="kspace",
                                acquisition="kspace")
    assert mended > plain + 0.5


def test_auto_model_checks_with_the_runs_projection(anatomical):
    """``--auto-model`` and ``--check`` give one number for a model: the asked-for
    model's predicted gain under ``acquisition="kspace"`` is the self-check's."""
    from srrecnn_jax.auto_model import choose
    from srrecnn_jax.guardrails import self_check_gain_db

    loaded = load_model(catalog.locate("mono-x2"))
    lr = to_array(anatomical, np.float32)
    choice = choose(loaded, lr, (2, 2, 2), acquisition="kspace")
    alone = self_check_gain_db(loaded.params, loaded.config, lr, (2, 2, 2),
                               acquisition="kspace")
    plain = self_check_gain_db(loaded.params, loaded.config, lr, (2, 2, 2))
    assert abs(alone - plain) > 0.01  # the projection changes the prediction here
    assert choice.gains["asked"] == pytest.approx(alone, abs=1e-6)


def test_bids_sidecar_records_the_acquisition(anatomical, tmp_path, models):
    import json

    from test_bids import OUTPUT, make_dataset, run

    raw = make_dataset(tmp_path / "raw", anatomical, corrupt=False)
    out = raw / "derivatives" / "srrecnn"
    code, _ = run(raw, out, "participant", "--participant-label", "01", "-m", models["mono"],
                  "-s", "2", "--skip-bids-validation", "--acquisition", "kspace")
    assert code == 0
    facts = json.loads((out / OUTPUT.replace(".nii.gz", ".json")).read_text())
    assert facts["SrrecnnAcquisition"] == "kspace"


def test_the_projection_is_counted_in_the_memory_check(monkeypatch):
    """A 100^3 output of a 1-channel model needs 20 bytes a voxel without the projection
    and 32 with it (3 float32 volumes of work): on a machine of 2.5e7 bytes the first
    fits, the second is refused before any work, naming ``scale``."""
    from test_safety import machine_with_memory

    from srrecnn_jax.errors import SrrecnnError
    from srrecnn_jax.inference import output_shape

    machine_with_memory(monkeypatch, 25_000_000)
    assert output_shape((50, 50, 50), (2, 2, 2), 1) == (100, 100, 100)
    with pytest.raises(SrrecnnError, match="memory") as info:
        output_shape((50, 50, 50), (2, 2, 2), 1, projecting=True)
    assert info.value.parameter == "scale"
