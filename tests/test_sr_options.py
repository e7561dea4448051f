"""``srrecnn sr`` with valid values of --tile, --order and --prototxt: each does what it says.

A tiny random model (``models`` in conftest) on a smooth 10 x 9 x 8 volume;
outputs are compared with the library's pipeline on the same array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import write

from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.cli import main
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import super_resolve_array


@pytest.fixture(scope="module")
def lr(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    volume = scipy.ndimage.gaussian_filter(rng.random((10, 9, 8)), 1.5) * 200 + 20
    return write(volume.astype(np.float32), tmp_path_factory.mktemp("lr") / "lr.nii.gz")


def sr(lr: Path, model: Path, out: Path, *options: str) -> np.ndarray:
    assert main(["sr", str(lr), "-o", str(out), "-m", str(model), "-s", "2", *options]) == 0
    return to_array(sitk.ReadImage(str(out)))


def test_tile_gives_the_whole_volume_result(lr, models, tmp_path):
    """Tiles of 4^3 output voxels (5 x 5 x 4 of them) within 1e-5 of the output range."""
    whole = sr(lr, models["mono"], tmp_path / "whole.nii.gz")
    tiled = sr(lr, models["mono"], tmp_path / "tiled.nii.gz", "--tile", "4")
    assert np.abs(tiled - whole).max() <= 1e-5 * (whole.max() - whole.min())


@pytest.mark.parametrize("order", [1, 3, 5])
def test_order_is_the_spline_order_of_the_zoom(order, lr, models, tmp_path):
    loaded = load_model(models["mono"])
    array = to_array(sitk.ReadImage(str(lr)))
    expected = super_resolve_array(loaded.params, loaded.config, array, 2, order=order)
    other = super_resolve_array(loaded.params, loaded.config, array, 2,
                                order=1 if order != 1 else 3)
    ours = sr(lr, models["mono"], tmp_path / "sr.nii.gz", "--order", str(order))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * float(np.ptp(expected)))
    assert np.abs(ours - other).max() > 1e-3 * float(np.ptp(expected))


def deploy_prototxt(outputs=(4, 4, 1)) -> str:
    """A Caffe deploy file for conftest's tiny model: 3^3 convolutions, pad 1, ReLU between."""
    text = 'name: "VDSR3D"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 9 dim: 9 dim: 9 }\n'
    bottom = "data"
    for i, n in enumerate(outputs, 1):
        text += (f'layer {{ name: "conv{i}" type: "Convolution" bottom: "{bottom}" '
                 f'top: "conv{i}" convolution_param {{ num_output: {n} kernel_size: 3 '
                 'pad: 1 } }\n')
        bottom = f"conv{i}"
        if i < len(outputs):
            text += f'layer {{ name: "relu{i}" type: "ReLU" bottom: "{bottom}" top: "{bottom}" }}\n'
    return text


def test_prototxt_that_matches_the_caffemodel_changes_nothing(lr, models, tmp_path):
    caffemodel = tmp_path / "tiny.caffemodel"
    assert main(["export-caffe", str(models["mono"]), "-o", str(caffemodel)]) == 0
    (tmp_path / "deploy.prototxt").write_text(deploy_prototxt())
    plain = sr(lr, caffemodel, tmp_path / "plain.nii.gz")
    checked = sr(lr, caffemodel, tmp_path / "checked.nii.gz", "--prototxt",
                 str(tmp_path / "deploy.prototxt"))
    np.testing.assert_array_equal(checked, plain)


def test_prototxt_that_does_not_match_is_one_error_line(lr, models, tmp_path, capsys):
    caffemodel = tmp_path / "tiny.caffemodel"
    assert main(["export-caffe", str(models["mono"]), "-o", str(caffemodel)]) == 0
    (tmp_path / "deploy.prototxt").write_text(deploy_prototxt((5, 4, 1)))
    capsys.readouterr()
    assert main(["sr", str(lr), "-o", str(tmp_path / "sr.nii.gz"), "-m", str(caffemodel),
                 "-s", "2", "--prototxt", str(tmp_path / "deploy.prototxt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deploy.prototxt" in err[0]
    assert not (tmp_path / "sr.nii.gz").exists()
