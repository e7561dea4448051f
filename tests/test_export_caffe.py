"""`srrecnn export-caffe`: a caffemodel that the converter reads back to identical params."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import MONO

from srrecnn_jax import config as configs
from srrecnn_jax import model
from srrecnn_jax.caffe import load_caffemodel
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


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protocol-buffer varint at ``pos``: (value, next position)."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def wire_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Fields ``(number, value)`` of one message, read independently of the package:
    varints (wire type 0) as ints, length-delimited ones (2) as bytes."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = varint(data, pos)
        if key & 7 == 0:
            value, pos = varint(data, pos)
        elif key & 7 == 2:
            length, pos = varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise AssertionError(f"unexpected wire type {key & 7}")
        fields.append((key >> 3, value))
    return fields


def packed_varints(data: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = varint(data, pos)
        values.append(value)
    return values


def caffe_layers(data: bytes) -> tuple[str, list[dict]]:
    """caffe.proto: NetParameter name 1, layer 100; LayerParameter name 1, type 2,
    blobs 7 (BlobProto: data 5 packed float, shape 7 -> BlobShape dim 1 packed),
    convolution_param 106 (num_output 1, pad 3, kernel_size 4, stride 6)."""
    net = wire_fields(data)
    layers = []
    for number, raw in net:
        if number != 100:
            continue
        layer = {"blobs": [], "conv": {}}
        for field, value in wire_fields(raw):
            if field in (1, 2):
                layer["name" if field == 1 else "type"] = value.decode()
            elif field == 7:
                blob = dict(wire_fields(value))
                dims = packed_varints(dict(wire_fields(blob[7]))[1])
                layer["blobs"].append(np.frombuffer(blob[5], "<f4").reshape(dims))
            elif field == 106:
                layer["conv"] = dict(wire_fields(value))
        layers.append(layer)
    return dict(net)[1].decode(), layers


def test_exported_layers_are_caffe_style(tmp_path):
    """Weights stored (out, in, kx, ky, kz) with convolution_param pads, as Caffe expects."""
    cfg = configs.tiny()
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(1), cfg))
    save_model(tmp_path / "m", LoadedModel(params, cfg))
    out = tmp_path / "m.caffemodel"
    main(["export-caffe", str(tmp_path / "m"), "-o", str(out)])
    name, layers = caffe_layers(out.read_bytes())
    convs = [layer for layer in layers if layer["type"] == "Convolution"]
    assert name == "VDSR3D" and [c["name"] for c in convs] == ["conv1", "conv2", "conv3"]
    assert [layer["type"] for layer in layers] == ["Convolution", "ReLU"] * 2 + ["Convolution"]
    weight, bias = convs[1]["blobs"]
    assert weight.shape == (4, 4, 3, 3, 3) and convs[1]["conv"] == {1: 4, 3: 1, 4: 3, 6: 1}
    np.testing.assert_array_equal(convs[0]["blobs"][0][:, :, 2, 1, 0],
                                  params["conv1"]["kernel"][2, 1, 0].T)
    np.testing.assert_array_equal(bias, params["conv2"]["bias"])


def test_export_round_trips_the_published_weights(caffe_dir, tmp_path):
    """The original monomodal caffemodel -> export -> convert: the same arrays."""
    original = load_caffemodel(caffe_dir / MONO)
    out = tmp_path / "again.caffemodel"
    assert main(["export-caffe", str(caffe_dir / MONO),
                 "-o", str(out)]) == 0
    back = load_caffemodel(out)
    assert back.config == original.config
    for name in original.params:
        np.testing.assert_array_equal(back.params[name]["kernel"],
                                      original.params[name]["kernel"])
        np.testing.assert_array_equal(back.params[name]["bias"], original.params[name]["bias"])


def test_export_refuses_to_overwrite(tmp_path, capsys):
    cfg = configs.tiny()
    save_model(tmp_path / "m", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    (tmp_path / "x.caffemodel").write_bytes(b"keep")
    assert main(["export-caffe", str(tmp_path / "m"), "-o", str(tmp_path / "x.caffemodel")]) == 1
    assert (tmp_path / "x.caffemodel").read_bytes() == b"keep"
    assert "already exists" in capsys.readouterr().err
