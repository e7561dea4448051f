"""`srrecnn export-caffe`: a caffemodel that the converter reads back to identical params."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from srrecnn_jax import config as configs
from srrecnn_jax import model
from srrecnn_jax.caffe import _convolutions, load_caffemodel
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.cli import main
from srrecnn_jax.config import ModelConfig


@pytest.mark.parametrize("cfg", [configs.tiny(), configs.tiny(in_channels=2),
                                 ModelConfig(kernels=(5, 1, 3), filters=(4, 3, 1),
                                             residual=False, padding="edge_valid")],
                         ids=["mono", "multi", "srcnn-like"])
def test_export_then_convert_gives_identical_params(cfg, tmp_path):
    params = model.init(jax.random.PRNGKey(0), cfg)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.01, params)  # non-zero biases
    save_model(tmp_path / "m", LoadedModel(params, cfg))
    out = tmp_path / "m.caffemodel"
    assert main(["export-caffe", str(tmp_path / "m"), "-o", str(out)]) == 0
    back = load_caffemodel(out)
    assert back.config == cfg
    for name, layer in params.items():
        np.testing.assert_array_equal(back.params[name]["kernel"], layer["kernel"])
        np.testing.assert_array_equal(back.params[name]["bias"], layer["bias"])


def test_exported_layers_are_caffe_style(tmp_path):
    """Weights stored (out, in, kx, ky, kz) with convolution_param pads, as Caffe expects."""
    cfg = configs.tiny()
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(1), cfg))
    save_model(tmp_path / "m", LoadedModel(params, cfg))
    out = tmp_path / "m.caffemodel"
    main(["export-caffe", str(tmp_path / "m"), "-o", str(out)])
    name, convs = _convolutions(out.read_bytes())
    assert name == "VDSR3D" and [c.name for c in convs] == ["conv1", "conv2", "conv3"]
    assert convs[1].weight.shape == (4, 4, 3, 3, 3) and convs[1].pad == [1]
    np.testing.assert_array_equal(convs[0].weight[:, :, 2, 1, 0],
                                  params["conv1"]["kernel"][2, 1, 0].T)


def test_export_round_trips_the_published_weights(caffe_dir, tmp_path):
    """The original monomodal caffemodel -> export -> convert: the same arrays."""
    original = load_caffemodel(caffe_dir / "SRReCNN3D_10Layers_IsoScalex2.caffemodel")
    out = tmp_path / "again.caffemodel"
    assert main(["export-caffe", str(caffe_dir / "SRReCNN3D_10Layers_IsoScalex2.caffemodel"),
                 "-o", str(out)]) == 0
    back = load_caffemodel(out)
    assert back.config == original.config
    for name in original.params:
        np.testing.assert_array_equal(back.params[name]["kernel"],
                                      original.params[name]["kernel"])


def test_export_refuses_to_overwrite(tmp_path, capsys):
    cfg = configs.tiny()
    save_model(tmp_path / "m", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    (tmp_path / "x.caffemodel").write_bytes(b"keep")
    assert main(["export-caffe", str(tmp_path / "m"), "-o", str(tmp_path / "x.caffemodel")]) == 1
    assert (tmp_path / "x.caffemodel").read_bytes() == b"keep"
    assert "already exists" in capsys.readouterr().err
