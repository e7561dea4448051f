"""A built wheel carries the shipped models, and an installation of it alone runs them.

The wheel is built offline from a copy of the source tree (no build isolation: the test
extra installs setuptools). The fresh virtual environment gets the wheel and nothing of
the source tree; its dependencies (jax, SimpleITK, ...) come from this environment's
site-packages through a ``.pth`` line, which adds their folder but runs none of its
``.pth`` files, so the editable install of the source tree is not seen there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"
SHIPPED = sorted(p.parent.name for p in CHECKPOINTS.glob("*/card.json"))
IGNORED = shutil.ignore_patterns(".git", ".venv", "runs", "data", "build", "dist", "out",
                                 "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")

pytestmark = pytest.mark.slow


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_listed_in_pyproject():
    """pyproject lists the packages one by one (the shipped models are mapped in from
    checkpoints/), so a new subpackage must be added there or the wheel would lack it."""
    found = sorted(".".join(p.parent.relative_to(REPO).parts)
                   for p in (REPO / "srrecnn_jax").rglob("__init__.py"))
    listed = pyproject()["tool"]["setuptools"]["packages"]
    assert sorted(set(listed) - {"srrecnn_jax.shipped_models"}) == found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "srrecnn-jax"
    shutil.copytree(REPO, source, ignore=IGNORED)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(dist), str(source)],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    (built,) = dist.glob("srrecnn_jax-*.whl")
    return built


def test_the_wheel_holds_every_shipped_models_weights_and_card(wheel):
    """Each shipped folder's card, README and model (config and every parameter file) is
    in the wheel under srrecnn_jax/shipped_models/, byte for byte."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in SHIPPED:
        files = [p for p in (CHECKPOINTS / folder / "model").rglob("*") if p.is_file()]
        files += [CHECKPOINTS / folder / "card.json", CHECKPOINTS / folder / "README.md"]
        for path in files:
            inside = "srrecnn_jax/shipped_models/" + path.relative_to(CHECKPOINTS).as_posix()
            assert inside in names, inside
            assert zipfile.ZipFile(wheel).read(inside) == path.read_bytes(), inside


def test_the_wheel_holds_no_training_scripts_nor_run_metrics(wheel):
    """Training configs, metrics and the scripts that made the models stay in the source
    tree: the wheel has only the package and the models' cards and weights."""
    names = zipfile.ZipFile(wheel).namelist()
    leaked = [n for n in names if n.startswith("srrecnn_jax/shipped_models/")
              and (n.endswith((".toml", ".jsonl", ".png")) or "scripts/" in n
                   or "train_config" in n)]
    assert leaked == []


def test_the_wheel_holds_the_score_tables_and_no_script_of_the_shelf(wheel):
    """``srrecnn models`` reads the score tables (``checkpoints/scores/``), so the wheel
    carries them; the only Python file of the shelf it carries is its ``__init__.py``."""
    names = zipfile.ZipFile(wheel).namelist()
    for table in (CHECKPOINTS / "scores").glob("*.json"):
        assert "srrecnn_jax/shipped_models/scores/" + table.name in names, table.name
    shelf_python = [n for n in names if n.startswith("srrecnn_jax/shipped_models/")
                    and n.endswith(".py")]
    assert shelf_python == ["srrecnn_jax/shipped_models/__init__.py"]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (bin folder returned)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    # The dependencies: this environment's site-packages, without running its .pth files.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip --target puts the console script under site/bin: move it where a venv has it.
    shutil.copy(site / "bin" / "srrecnn", venv / "bin" / "srrecnn")
    script = (venv / "bin" / "srrecnn")
    script.write_text(f"#!{python}\n" + script.read_text().split("\n", 1)[1])
    return venv / "bin"


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return env


def test_installed_package_is_the_wheels_not_the_source_tree(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c",
                            "import srrecnn_jax, srrecnn_jax.catalog as c; "
                            "print(srrecnn_jax.__file__); print(c.CHECKPOINTS)"],
                           cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(str(installed.parent) in line for line in where), where


def test_installed_wheel_lists_every_shipped_model_from_another_folder(installed, tmp_path):
    result = subprocess.run([str(installed / "srrecnn"), "models", "--json"], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    import json

    listed = [m["name"] for m in json.loads(result.stdout)]
    assert listed == [name.replace("_", "-") for name in SHIPPED]


def test_installed_wheel_super_resolves_with_a_shipped_model_by_name(installed, tmp_path):
    """``srrecnn sr small.nii.gz -o out.nii.gz -m mono-x2 -s 2`` from a folder outside the
    source tree: an output of twice the size (round(n * 2) voxels per axis)."""
    values = np.random.default_rng(0).uniform(0.1, 1.0, (10, 12, 11)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "small.nii.gz"))
    result = subprocess.run([str(installed / "srrecnn"), "sr", "small.nii.gz", "-o",
                             "out.nii.gz", "-m", "mono-x2", "-s", "2"], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sitk.ReadImage(str(tmp_path / "out.nii.gz")).GetSize() == (22, 24, 20)
