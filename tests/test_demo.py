"""`srrecnn demo` end to end on a brain no shipped model saw: crops, and the whole volume."""

from __future__ import annotations

import re
import runpy

import jax
import pytest
import SimpleITK as sitk
from conftest import REPO

from srrecnn_jax import config, model
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.cli import main


def test_demo_writes_volumes_and_a_montage(mni_t1_path, tmp_path, capsys):
    cfg = config.tiny()
    save_model(tmp_path / "m", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "-m", str(tmp_path / "m"), "--crop", "32"]) == 0
    printed = capsys.readouterr().out
    assert "cubic spline  PSNR" in printed and "SRReCNN3D     PSNR" in printed
    for name in ("lr", "spline", "sr", "hr"):
        size = sitk.ReadImage(str(out / f"{name}.nii.gz")).GetSize()
        assert size == ((16, 16, 16) if name == "lr" else (32, 32, 32))
    montage = sitk.ReadImage(str(out / "montage.png"))
    assert montage.GetSize()[0] > 400


def test_demo_shows_a_real_low_resolution_scan_beside_spline(mni_t1_path, tmp_path, capsys):
    """nibabel's real 2 mm T1 (no truth) at x2: spline beside SR in real_2mm.png."""
    cfg = config.tiny()
    save_model(tmp_path / "m", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "-m", str(tmp_path / "m"), "--crop", "32"]) == 0
    assert "real_2mm.png" in capsys.readouterr().out
    figure = sitk.ReadImage(str(out / "real_2mm.png"))
    assert figure.GetSize()[0] >= 2 * 3 * 80  # two columns or more, 3 inches at 80 dpi


def test_demo_without_a_checkpoint_is_one_error_line(tmp_path, capsys, monkeypatch):
    from srrecnn_jax import demo

    monkeypatch.setattr(demo, "SHIPPED_ROOT", tmp_path / "none")
    assert main(["demo", "--out-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--model" in err


def test_demo_of_a_multimodal_model_is_one_error_line_and_writes_nothing(models, tmp_path,
                                                                        capsys):
    """The demo brain has no second modality to give a two-channel model."""
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "-m", str(models["multi"]), "--crop", "32"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "multimodal" in err and "--model" in err
    assert not out.exists()


def test_demo_runs_the_shipped_checkpoint_by_default(mni_t1_path, tmp_path, capsys):
    """No --model: checkpoints/real_x2 (10 layers, 64 filters) restores a crop better than
    spline (interior of a 48^3 crop)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--crop", "48"]) == 0
    lines = capsys.readouterr().out.splitlines()
    spline, ours = (float(line.split("PSNR")[1].split("dB")[0]) for line in lines[:2])
    assert ours > spline + 1.0


@pytest.mark.slow
def test_whole_volume_demo_prints_the_readmes_figures(mni_t1_path, tmp_path, capsys,
                                                       monkeypatch):
    """`srrecnn demo` as the README runs it (whole volume, shipped checkpoint): the two
    PSNR figures docs/cli.md quotes for the data it scored (Colin27 or the held-out MNI
    slab), to their two decimals. The original weights' run is left out (time)."""
    from srrecnn_jax import demo

    monkeypatch.setattr(demo, "ORIGINAL", tmp_path / "absent.caffemodel")
    readme = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert main(["demo", "--out-dir", str(tmp_path / "demo")]) == 0
    lines = capsys.readouterr().out.splitlines()
    data = "Colin27" if lines[2].startswith("data: Colin27") else "held-out MNI slab"
    quoted = re.search(rf"^- {data}: `cubic spline PSNR ([\d.]+) dB`, `SRReCNN3D PSNR "
                       r"([\d.]+) dB`", readme, re.MULTILINE)
    printed = [float(line.split("PSNR")[1].split("dB")[0]) for line in lines[:2]]
    assert printed == [float(quoted.group(1)), float(quoted.group(2))]


def test_demo_never_scores_the_shipped_checkpoints_training_data(mni_t1_path, tmp_path,
                                                                monkeypatch):
    """Without Colin27, the scan is the slab that checkpoints/scripts/split_templates.py holds out
    of every shipped model's training set, voxel for voxel."""
    from srrecnn_jax import demo

    monkeypatch.setattr(demo, "COLIN27", tmp_path / "absent.nii.gz")
    scan, data = demo.unseen_scan()
    split = runpy.run_path(str(REPO / "checkpoints" / "scripts" / "split_templates.py"))["split"]
    split(tmp_path / "split", {"a": demo.mni_t1()})
    heldout = sitk.ReadImage(str(tmp_path / "split" / "heldout.nii.gz"))
    assert "held out" in data and scan.GetSize() == heldout.GetSize()
    assert (sitk.GetArrayFromImage(scan) == sitk.GetArrayFromImage(heldout)).all()


def test_template_split_keeps_the_mni_x2_training_slabs(mni_t1_path, tmp_path):
    """The 2009a training slabs are the MNI T1's z 0-99 and 140-188 (the files
    checkpoints/mni_x2 trained on), so the held-out z 100-139 touch none of them."""
    from srrecnn_jax import demo

    split = runpy.run_path(str(REPO / "checkpoints" / "scripts" / "split_templates.py"))["split"]
    split(tmp_path, {"a": demo.mni_t1()})
    t1 = sitk.GetArrayFromImage(demo.mni_t1())  # (z, y, x)
    inferior = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a_inferior.nii.gz")))
    superior = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a_superior.nii.gz")))
    assert (inferior == t1[:100]).all() and (superior == t1[140:]).all()
