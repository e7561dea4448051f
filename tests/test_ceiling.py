"""The output's ceiling: by default no voxel above 1.2x the input's maximum, a warning
counting the voxels clipped there, and the release's range behind ``--ceiling off``.

The case is nibabel's real 2 mm T1 with ``mono-x2`` (trained on the release's Gaussian
blur only): its brightest voxels lie in the first z slice and the network sharpens them
to about 2.5x the input's maximum.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import crop

from srrecnn_jax import catalog
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.cli import main
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.inference_options import CEILING, InferenceOptions


@pytest.fixture(scope="module")
def mono_x2():
    loaded = load_model(catalog.locate("mono-x2"))
    return loaded.params, loaded.config


@pytest.fixture
def bright_face(anatomical) -> sitk.Image:
    """The 2 mm scan's inferior half (its brightest voxels on the first z slice)."""
    return crop(anatomical, (0, 0, 0), (33, 41, 12))


def test_release_range_overshoots_on_a_real_2mm_scan(mono_x2, bright_face):
    """Without a ceiling (the release) the output passes 1.2x the input's maximum: the
    case the ceiling is for."""
    lr = to_array(bright_face, np.float32)
    y = super_resolve_array(*mono_x2, lr, 2, ceiling=None)
    assert y.max() > 1.5 * lr.max()


def test_default_output_stays_below_the_ceiling(mono_x2, bright_face):
    lr = to_array(bright_face, np.float32)
    y = super_resolve_array(*mono_x2, lr, 2)
    assert y.max() <= np.float32(CEILING * lr.max())


def test_ceiling_changes_only_the_voxels_above_it(mono_x2, bright_face):
    lr = to_array(bright_face, np.float32)
    free = super_resolve_array(*mono_x2, lr, 2, ceiling=None)
    capped = super_resolve_array(*mono_x2, lr, 2)
    top = np.float32(CEILING * lr.max())
    below = free <= top
    np.testing.assert_array_equal(capped[below], free[below])
    np.testing.assert_array_equal(capped[~below], top)


@pytest.mark.parametrize("bad", [0.5, float("nan")])
def test_ceiling_below_one_is_refused(bad):
    with pytest.raises(Exception, match="ceiling") as info:
        InferenceOptions(2, ceiling=bad)
    assert info.value.parameter == "ceiling"


def test_cli_warns_with_the_clipped_count(bright_face, tmp_path, capsys):
    sitk.WriteImage(bright_face, str(tmp_path / "lr.nii.gz"))
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "-o", str(out), "-m", "mono-x2",
                 "-s", "2"]) == 0
    err = capsys.readouterr().err
    assert "output voxels" in err and "were clipped" in err
    y = to_array(sitk.ReadImage(str(out)), np.float32)
    assert y.max() <= np.float32(CEILING * to_array(bright_face, np.float32).max())


def test_cli_ceiling_off_is_the_release_range(bright_face, tmp_path, capsys):
    sitk.WriteImage(bright_face, str(tmp_path / "lr.nii.gz"))
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "-o", str(out), "-m", "mono-x2",
                 "-s", "2", "--ceiling", "off"]) == 0
    assert "clipped" not in capsys.readouterr().err
    lr = to_array(bright_face, np.float32)
    assert to_array(sitk.ReadImage(str(out)), np.float32).max() > 1.5 * lr.max()


def test_cli_bad_ceiling_is_one_line_naming_the_option(bright_face, tmp_path, capsys):
    sitk.WriteImage(bright_face, str(tmp_path / "lr.nii.gz"))
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "-o", str(out), "-m", "mono-x2",
                 "-s", "2", "--ceiling", "0.9"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ceiling" in err
    assert not out.exists()


def test_batch_row_carries_the_clipping_warning(bright_face, tmp_path):
    sitk.WriteImage(bright_face, str(tmp_path / "lr.nii.gz"))
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "--out-dir", str(tmp_path / "out"),
                 "-m", "mono-x2", "-s", "2", "--quiet"]) == 0
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "srrecnn_manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["job"]["ceiling"] == CEILING
    assert any("were clipped" in w for w in ok[0]["warnings"])
