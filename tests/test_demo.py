"""`srrecnn demo` end to end on a small crop of the installed MNI T1."""

from __future__ import annotations

import jax
import SimpleITK as sitk

from srrecnn_jax import config, model
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.cli import main


def test_demo_writes_volumes_and_a_montage(mni_t1_path, tmp_path, capsys):
    cfg = config.tiny()
    save_model(tmp_path / "m", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "-m", str(tmp_path / "m"), "--crop", "32"]) == 0
    printed = capsys.readouterr().out
    assert "cubic spline  PSNR" in printed and "SRReCNN3D     PSNR" in printed
    for name in ("lr", "spline", "sr", "hr"):
        size = sitk.ReadImage(str(out / f"{name}.nii.gz")).GetSize()
        assert size == ((16, 16, 16) if name == "lr" else (32, 32, 32))
    montage = sitk.ReadImage(str(out / "montage.png"))
    assert montage.GetSize()[0] > 400


def test_demo_without_a_checkpoint_is_one_error_line(tmp_path, capsys, monkeypatch):
    from srrecnn_jax import demo

    monkeypatch.setattr(demo, "SHIPPED", tmp_path / "none")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--model" in err


def test_demo_runs_the_shipped_checkpoint_by_default(mni_t1_path, tmp_path, capsys):
    """No --model: checkpoints/mni_x2 (5 layers, 16 filters) restores a crop better than
    spline (interior of a 48^3 crop)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--crop", "48"]) == 0
    lines = capsys.readouterr().out.splitlines()
    spline, ours = (float(line.split("PSNR")[1].split("dB")[0]) for line in lines[:2])
    assert ours > spline + 1.0
