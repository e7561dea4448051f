"""``srrecnn sr --isotropic``: the factors that make a thick-slice scan isotropic, from its
header (any thick axis, non-integer factors), what is refused as ambiguous, and batch
mode, where each input has its own factors and an ambiguous one fails alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_batch import assert_same_result, last_run, manifest, run_cli, save

from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.cli import main
from srrecnn_jax.degradation import degrade_image, slice_profile
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import to_array, to_image
from srrecnn_jax.scales import isotropic_factors


def test_the_clinical_t2_geometry_gives_a_non_integer_factor_along_z():
    """320 x 320 x 26 voxels of 0.75 x 0.75 x 5.5 mm: z becomes round(25 x 5.5 / 0.75) + 1
    = 184 slices (factor 184 / 26 = 7.08), x and y stay."""
    assert isotropic_factors((320, 320, 26), (0.75, 0.75, 5.5)) == (1.0, 1.0, 184 / 26)


def test_the_thick_axis_may_be_any_axis_and_a_target_spacing_applies_to_all():
    assert isotropic_factors((30, 40, 50), (1.0, 4.0, 1.0)) == (1.0, 157 / 40, 1.0)
    assert isotropic_factors((30, 40, 50), (1.0, 1.0, 4.0), target=0.5) == (
        59 / 30, 79 / 40, 393 / 50)


@pytest.mark.parametrize("spacing, words", [((1.0, 1.0, 1.1), "near isotropic"),
                                            ((0.9, 3.0, 3.0), "two coarse axes")])
def test_an_ambiguous_geometry_is_one_error_naming_isotropic(spacing, words):
    with pytest.raises(SrrecnnError, match=words) as error:
        isotropic_factors((20, 20, 20), spacing)
    assert error.value.parameter == "isotropic"


def head(shape=(36, 40, 44)) -> sitk.Image:
    """A smooth brain-like 1 mm volume (x, y, z)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    values = (np.exp(-(grid ** 2).sum(0) / 0.4) * (1 + 0.3 * np.sin(6 * grid[2]))
              + 0.05).astype(np.float32)
    return to_image(values, (1.0, 1.0, 1.0), (-3.0, 4.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture(scope="module")
def thick(tmp_path_factory):
    """The volume degraded to 1 x 1 x 4 by a slice profile (its LR header as the
    degradation writes it), its truth, and the same scan with y and z swapped."""
    root = tmp_path_factory.mktemp("isotropic")
    images = degrade_image(head(), (1, 1, 4), slice_profile((1, 1, 4)))
    sitk.WriteImage(images["lr"], str(root / "z.nii.gz"))
    lr = images["lr"]
    swapped = to_image(to_array(lr).transpose(0, 2, 1).copy(),
                       tuple(np.array(lr.GetSpacing())[[0, 2, 1]]), lr.GetOrigin(),
                       (1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(swapped, str(root / "y.nii.gz"))
    return root, images["hr"]


def test_isotropic_output_lies_on_the_hr_grid(thick, tmp_path):
    """1 x 1 x 4 with the degradation's header: the output has the cropped HR's size,
    1 mm spacing (to 1e-6) and origin: the grid the thick slices came from."""
    root, truth = thick
    out = tmp_path / "iso.nii.gz"
    assert main(["sr", str(root / "z.nii.gz"), "-o", str(out), "-m", "thick-slice",
                 "--isotropic"]) == 0
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == truth.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.0), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), truth.GetOrigin(), atol=1e-6)


def test_the_same_scan_with_y_thick_gives_the_same_numbers(thick, tmp_path):
    """The scan with its thick axis along y instead of z: the output is the z-thick one's
    with y and z swapped, to 1e-5 of the range (the model runs with the axes swapped)."""
    root, _ = thick
    for axis in ("z", "y"):
        assert main(["sr", str(root / f"{axis}.nii.gz"), "-o", str(tmp_path / f"{axis}.nii.gz"),
                     "-m", "thick-slice", "--isotropic"]) == 0
    z = to_array(sitk.ReadImage(str(tmp_path / "z.nii.gz")))
    y = to_array(sitk.ReadImage(str(tmp_path / "y.nii.gz")))
    np.testing.assert_allclose(y.transpose(0, 2, 1), z, rtol=0, atol=1e-5 * float(z.max()))


def test_isotropic_with_a_scale_is_refused(thick, tmp_path, capsys):
    root, _ = thick
    assert main(["sr", str(root / "z.nii.gz"), "-o", str(tmp_path / "a.nii.gz"),
                 "-m", "thick-slice", "--isotropic", "-s", "2"]) == 1
    assert "--isotropic" in capsys.readouterr().err
    assert main(["sr", str(root), "--out-dir", str(tmp_path / "o"), "-m", "thick-slice",
                 "--isotropic", "-s", "2"]) == 1
    assert "--isotropic" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_neither_scale_nor_isotropic_is_one_error(thick, tmp_path, capsys):
    root, _ = thick
    assert main(["sr", str(root / "z.nii.gz"), "-o", str(tmp_path / "a.nii.gz"),
                 "-m", "thick-slice"]) == 1
    assert "-s/--scale" in capsys.readouterr().err


# --- batch mode: each input's factors from its own header ----------------------------------

def scan(size, spacing, seed: int) -> sitk.Image:
    """A small smooth positive volume of ``size`` voxels of ``spacing`` mm."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in size], indexing="ij"))
    noise = np.random.default_rng(seed).uniform(0, 0.05, size)
    values = (np.exp(-(grid ** 2).sum(0)) + 0.1 + noise).astype(np.float32)
    return to_image(values, spacing, (1.0, -2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture
def scans(tmp_path) -> dict[str, Path]:
    """Two thick-slice scans of different slice spacing and thick axis: 12 x 14 x 5 of
    1 x 1 x 3 mm (z) and 12 x 5 x 10 of 0.9 x 3.6 x 0.9 mm (y)."""
    return {"z": save(scan((12, 14, 5), (1.0, 1.0, 3.0), 0), tmp_path / "in" / "z.nii.gz"),
            "y": save(scan((12, 5, 10), (0.9, 3.6, 0.9), 1), tmp_path / "in" / "y.nii.gz")}


def test_batch_isotropic_gives_each_input_the_output_of_sr_isotropic_on_it(scans, models,
                                                                          tmp_path):
    """Each output equals ``sr INPUT -o OUT --isotropic`` on its input (grid and voxels),
    and its row records the factors of its own header."""
    out = tmp_path / "out"
    code, _, err = run_cli(tmp_path / "in", "--out-dir", out, "-m", models["mono"],
                           "--isotropic")
    assert code == 0, err
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    for name, path in scans.items():
        single = tmp_path / f"single_{name}.nii.gz"
        code, _, err = run_cli(path, "-o", single, "-m", models["mono"], "--isotropic")
        assert code == 0, err
        assert_same_result(sitk.ReadImage(str(out / f"{name}_SR.nii.gz")),
                           sitk.ReadImage(str(single)))
        image = sitk.ReadImage(str(path))
        assert rows[path.name]["scale"] == pytest.approx(
            isotropic_factors(image.GetSize(), image.GetSpacing()))
    assert rows["z.nii.gz"]["scale"] != rows["y.nii.gz"]["scale"]


def test_batch_isotropic_warns_about_each_inputs_own_factors(scans, models, tmp_path):
    """A model trained at 1 x 1 x 4 for 1 mm voxels: each row warns that its own factors
    are untrained (naming its input), and none that its output voxels are far from 1 mm
    (they are 1 mm: the header check uses the input's factors, not a run-wide scale)."""
    loaded = load_model(models["mono"])
    model = save_model(tmp_path / "thick_model", LoadedModel(
        loaded.params, loaded.config, trained_scales=[[1, 1, 4]], trained_spacing=1.0))
    out = tmp_path / "out"
    code, _, err = run_cli(tmp_path / "in", "--out-dir", out, "-m", model, "--isotropic")
    assert code == 0, err
    for row in manifest(out):
        factors = tuple(row["scale"])
        assert [w for w in row["warnings"] if "differs from the scale" in w] == [
            f"{row['input']}: scale {factors} differs from the scale(s) [1x1x4] the model "
            "was trained for"]
        assert not [w for w in row["warnings"] if "far from the" in w], row["warnings"]


def test_batch_isotropic_with_an_ambiguous_input_is_one_error_row(scans, models, tmp_path):
    """A near-isotropic input (1 x 1 x 1.1 mm) fails alone: one ``srrecnn: error:`` line
    naming --isotropic and the file, a row naming the parameter; the others are written."""
    near = save(scan((8, 8, 8), (1.0, 1.0, 1.1), 2), tmp_path / "in" / "near.nii.gz")
    out = tmp_path / "out"
    code, _, err = run_cli(tmp_path / "in", "--out-dir", out, "-m", models["mono"],
                           "--isotropic")
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("srrecnn: error:")] == [
        f"srrecnn: error: --isotropic: {near}: voxels of 1x1x1.1 mm are near isotropic "
        "already (the thickest axis is under 1.2 times the finest)"]
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert rows["near.nii.gz"]["status"] == "error"
    assert rows["near.nii.gz"]["parameter"] == "isotropic"
    assert {rows[p.name]["status"] for p in scans.values()} == {"ok"}
    assert not (out / "near_SR.nii.gz").exists()


def test_batch_isotropic_rerun_skips_and_another_target_spacing_redoes(scans, models,
                                                                       tmp_path):
    out = tmp_path / "out"
    command = [tmp_path / "in", "--out-dir", out, "-m", models["mono"], "--isotropic"]
    assert run_cli(*command)[0] == 0
    assert run_cli(*command)[0] == 0
    assert {r["status"] for r in last_run(out)} == {"skipped"}
    code, _, err = run_cli(*command, "--target-spacing", "0.8")
    assert code == 0, err
    rows = last_run(out)
    assert {r["status"] for r in rows} == {"ok"}
    assert all("target_spacing was the in-plane spacing, now 0.8" in r["redone"]
               for r in rows)
    spacing = sitk.ReadImage(str(out / "z_SR.nii.gz")).GetSpacing()
    np.testing.assert_allclose(spacing, (0.8, 0.8, 0.8), rtol=0.1)
