"""`srrecnn demo` end to end on the installed MNI T1: small crops, and once the whole volume."""

from __future__ import annotations

import re

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


@pytest.mark.slow
def test_whole_volume_demo_prints_the_readmes_figures(mni_t1_path, tmp_path, capsys):
    """`srrecnn demo` as the README runs it (whole volume, shipped checkpoint): the two
    PSNR figures the README quotes, to their two decimals."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quoted = {name: float(re.search(rf"`{name}\s+PSNR ([\d.]+) dB`", readme).group(1))
              for name in ("cubic spline", "SRReCNN3D")}
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = {line.split("PSNR")[0].strip(): float(line.split("PSNR")[1].split("dB")[0])
               for line in capsys.readouterr().out.splitlines()[:2]}
    assert printed == quoted
