"""Reading Caffe models without Caffe: the published weights, synthetic nets, bad files, the CLI.

Synthetic caffemodels are written here by a minimal protobuf wire-format
encoder that shares no code with the package's decoder. Field numbers are
those of Caffe's ``caffe.proto``. Caffe stores a convolution weight as
``(out, in, kx, ky, kz)`` for (x, y, z) arrays; the package's kernels are
``(kx, ky, kz, in, out)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
from conftest import MONO, MULTI, SRCNN, write

from srrecnn_jax import caffe as caffe_module
from srrecnn_jax import model
from srrecnn_jax.caffe import load_caffemodel, parse_prototxt
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.cli import main
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import super_resolve_array

# --- a minimal protobuf wire-format encoder ---------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def int_field(field: int, n: int) -> bytes:
    return varint(field << 3 | 0) + varint(n)


def bytes_field(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def string_field(field: int, text: str) -> bytes:
    return bytes_field(field, text.encode())


def packed_ints(field: int, values) -> bytes:
    return bytes_field(field, b"".join(varint(int(v)) for v in values))


def packed_floats(field: int, values) -> bytes:
    return bytes_field(field, np.asarray(values, "<f4").tobytes())


# --- Caffe messages (caffe.proto field numbers) ------------------------------------------------

V1_TYPES = {"HDF5Data": 9, "Convolution": 4, "ReLU": 18}  # V1LayerParameter.LayerType


def blob(array: np.ndarray, legacy: bool = False) -> bytes:
    """BlobProto: N-D ``shape`` (7, BlobShape.dim 1) or legacy num/channels/height/width (1-4)."""
    array = np.asarray(array, np.float32)
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(int_field(f, d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = bytes_field(7, packed_ints(1, array.shape))
    return head + packed_floats(5, array.ravel())


def conv_param(num_output: int, kernel: int, pad: int) -> bytes:
    """ConvolutionParameter: num_output 1, pad 3, kernel_size 4."""
    return int_field(1, num_output) + int_field(3, pad) + int_field(4, kernel)


def layer(style: str, name: str, kind: str, bottom=(), top=(), blobs=(), conv=None) -> bytes:
    """A NetParameter entry: new ``layer`` (100, LayerParameter) or V1 ``layers`` (2)."""
    if style == "layer":
        body = (string_field(1, name) + string_field(2, kind)
                + b"".join(string_field(3, b) for b in bottom)
                + b"".join(string_field(4, t) for t in top)
                + b"".join(bytes_field(7, b) for b in blobs)
                + (bytes_field(106, conv) if conv else b""))
        return bytes_field(100, body)
    body = (b"".join(string_field(2, b) for b in bottom)
            + b"".join(string_field(3, t) for t in top)
            + string_field(4, name) + int_field(5, V1_TYPES[kind])
            + b"".join(bytes_field(6, b) for b in blobs)
            + (bytes_field(10, conv) if conv else b""))
    return bytes_field(2, body)


def caffe_net(weights, biases, style: str = "layer", legacy_bias: bool = False, pad: int = 1,
              name: str = "TinyNet") -> bytes:
    """A training-style NetParameter: a data layer, then conv1..N with ReLU between."""
    parts = [string_field(1, name), layer(style, "data", "HDF5Data", top=["data"])]
    bottom = "data"
    for i, (w, b) in enumerate(zip(weights, biases), 1):
        parts.append(layer(style, f"conv{i}", "Convolution", [bottom], [f"conv{i}"],
                           [blob(w), blob(b, legacy_bias)],
                           conv_param(w.shape[0], w.shape[2], pad)))
        bottom = f"conv{i}"
        if i < len(weights):
            parts.append(layer(style, f"relu{i}", "ReLU", [bottom], [bottom]))
    return b"".join(parts)


def tiny_weights(channels=(1, 4, 4, 1), k: int = 3, seed: int = 0):
    """Random Caffe-layout weights (out, in, k, k, k) and biases for a conv chain."""
    rng = np.random.default_rng(seed)
    pairs = list(zip(channels[:-1], channels[1:]))
    weights = [rng.normal(0, 0.3, (o, i, k, k, k)).astype(np.float32) for i, o in pairs]
    biases = [rng.normal(0, 0.1, o).astype(np.float32) for _, o in pairs]
    return weights, biases


TINY_CONFIG = ModelConfig(kernels=(3, 3, 3), filters=(4, 4, 1), in_channels=1, residual=True,
                          padding="same")
TINY_PARAMETERS = (27 * 1 * 4 + 4) + (27 * 4 * 4 + 4) + (27 * 4 * 1 + 1)  # 657

VARIANTS = {
    "layer": dict(style="layer"),
    "V1 layers": dict(style="layers"),
    "legacy bias dims": dict(style="layer", legacy_bias=True),
}


def write_tiny(path: Path, **kwargs) -> tuple[Path, list, list]:
    weights, biases = tiny_weights()
    path.write_bytes(caffe_net(weights, biases, **kwargs))
    return path, weights, biases


def tiny_prototxt(kernel: int = 3, outputs=(4, 4, 1), in_channels: int = 1, pad: int = 1) -> str:
    text = f'name: "TinyNet"\ninput: "data"\ninput_shape {{ dim: 1 dim: {in_channels} ' \
           f'dim: 9 dim: 9 dim: 9 }}\n'
    bottom = "data"
    for i, n in enumerate(outputs, 1):
        text += (f'layer {{\n  name: "conv{i}"\n  type: "Convolution"\n  bottom: "{bottom}"\n'
                 f'  top: "conv{i}"\n  convolution_param {{\n    num_output: {n}\n'
                 f'    kernel_size: {kernel}\n    pad: {pad}\n  }}\n}}\n')
        bottom = f"conv{i}"
        if i < len(outputs):
            text += f'layer {{ name: "relu{i}" type: "ReLU" bottom: "{bottom}" top: "{bottom}" }}\n'
    return text


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --- the published models ----------------------------------------------------------------------


def recnn_shapes(in_channels: int) -> list[tuple[int, ...]]:
    return ([(3, 3, 3, in_channels, 64)] + [(3, 3, 3, 64, 64)] * 8 + [(3, 3, 3, 64, 1)])


PUBLISHED = {
    MONO: dict(prototxt="SRReCNN3D_10L_deploy.prototxt", shapes=recnn_shapes(1),
               parameters=888_769, scales=[2.0],
               config=ModelConfig((3,) * 10, (64,) * 9 + (1,), 1, True, "same")),
    MULTI: dict(prototxt="MultiSRReCNN3D_10L_deploy.prototxt", shapes=recnn_shapes(2),
                parameters=888_769 + 27 * 64, scales=[2.0],
                config=ModelConfig((3,) * 10, (64,) * 9 + (1,), 2, True, "same")),
    SRCNN: dict(prototxt="SRCNN3D_deploy.prototxt",
                shapes=[(9, 9, 9, 1, 64), (1, 1, 1, 64, 32), (5, 5, 5, 32, 1)],
                parameters=52_801, scales=None,
                config=ModelConfig((9, 1, 5), (64, 32, 1), 1, False, "edge_valid")),
}


@pytest.fixture(params=[(name, deploy) for name in PUBLISHED for deploy in (True, False)],
                ids=lambda p: f"{p[0].split('_')[0]}-{'prototxt' if p[1] else 'bare'}")
def published(request, caffe_dir):
    """(expected facts, CaffeModel) for each published model, with and without its prototxt."""
    name, deploy = request.param
    facts = PUBLISHED[name]
    prototxt = caffe_dir / facts["prototxt"] if deploy else None
    return name, facts, load_caffemodel(caffe_dir / name, prototxt)


def test_published_kernel_and_bias_shapes(published):
    """Layers conv1..N hold (k, k, k, in, out) kernels and (out,) biases, float32."""
    _, facts, caffe = published
    assert caffe.layer_names == [f"conv{i + 1}" for i in range(len(facts["shapes"]))]
    assert list(caffe.params) == caffe.layer_names
    for name, shape in zip(caffe.layer_names, facts["shapes"]):
        assert caffe.params[name]["kernel"].shape == shape
        assert caffe.params[name]["bias"].shape == (shape[-1],)
        assert caffe.params[name]["kernel"].dtype == np.float32
        assert caffe.params[name]["bias"].dtype == np.float32


def test_published_parameter_count(published):
    """Parameters = sum of k^3 * in * out + out over the layers (888,769 / +1,728 / 52,801)."""
    _, facts, caffe = published
    from_shapes = sum(math.prod(s) + s[-1] for s in facts["shapes"])
    assert from_shapes == facts["parameters"]
    assert model.param_count(caffe.params) == from_shapes


def test_published_config_is_inferred(published):
    """ReCNNs: 3^3 x 64 chain, 'same' padding, residual; SRCNN3D: 9-1-5, 'edge_valid', none."""
    _, facts, caffe = published
    assert caffe.config == facts["config"]


def test_published_trained_scales_come_from_the_file_name(published):
    """'IsoScalex2' gives [2.0]; 'SRCNN3D_iter_470000' names no scale, giving None."""
    _, facts, caffe = published
    assert caffe.trained_scales == facts["scales"]


def test_published_source_sha256_matches_provenance(published, caffe_dir):
    """source = {file, sha256}, the sha256 being the one listed in PROVENANCE.md."""
    name, _, caffe = published
    listed = {}
    for line in (caffe_dir / "PROVENANCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[0-9a-f]{64}", cells[2]):
            listed[cells[0]] = cells[2]
    assert caffe.source == {"file": name, "sha256": listed[name]}
    assert hashlib.sha256((caffe_dir / name).read_bytes()).hexdigest() == listed[name]


def test_published_net_names(caffe_dir):
    """The NetParameter names: VDSR3D for both ReCNNs, SRCNN3D for SRCNN3D."""
    assert [load_caffemodel(caffe_dir / n).net_name for n in (MONO, MULTI, SRCNN)] == \
        ["VDSR3D", "VDSR3D", "SRCNN3D"]


# --- synthetic caffemodels ---------------------------------------------------------------------


@pytest.fixture(params=list(VARIANTS))
def tiny(request, tmp_path):
    """A 1 -> 4 -> 4 -> 1 net (3^3, pad 1) in each message style; (CaffeModel, weights, biases)."""
    path, weights, biases = write_tiny(tmp_path / "tiny.caffemodel", **VARIANTS[request.param])
    return load_caffemodel(path), weights, biases


def test_kernel_is_the_caffe_blob_transposed(tiny):
    """kernel == weight.transpose(2, 3, 4, 1, 0) exactly: (out, in, kx, ky, kz) -> (kx, ky, kz,
    in, out), no axis flipped."""
    caffe, weights, _ = tiny
    for i, w in enumerate(weights, 1):
        np.testing.assert_array_equal(caffe.params[f"conv{i}"]["kernel"],
                                      w.transpose(2, 3, 4, 1, 0))


def test_biases_are_read_exactly(tiny):
    """Biases equal the written float32 values, from N-D and legacy (1, 1, 1, n) blobs."""
    caffe, _, biases = tiny
    for i, b in enumerate(biases, 1):
        np.testing.assert_array_equal(caffe.params[f"conv{i}"]["bias"], b)


def test_synthetic_config_names_and_layers(tiny):
    """Config 3^3 x (4, 4, 1), 1 channel in, 'same', residual; only conv layers are kept."""
    caffe, _, _ = tiny
    assert caffe.config == TINY_CONFIG
    assert caffe.layer_names == ["conv1", "conv2", "conv3"]
    assert caffe.net_name == "TinyNet"


def test_zero_pads_mean_edge_valid_without_residual(tmp_path):
    """pad 0 on every layer is the SRCNN3D scheme: 'edge_valid', residual off."""
    path, _, _ = write_tiny(tmp_path / "valid.caffemodel", pad=0)
    config = load_caffemodel(path).config
    assert (config.padding, config.residual) == ("edge_valid", False)


def test_converted_synthetic_model_runs_like_the_library(tmp_path):
    """convert + sr -s 2 through the CLI equals super_resolve_array with the same params
    (rtol 1e-6), and the network visibly changes the zoomed image."""
    path, _, _ = write_tiny(tmp_path / "tiny.caffemodel")
    folder = tmp_path / "tiny.model"
    assert main(["convert", str(path), "-o", str(folder)]) == 0
    lr = np.random.default_rng(1).uniform(0.5, 2.0, (6, 7, 8)).astype(np.float32)
    image = write(lr, tmp_path / "lr.nii.gz")
    out = tmp_path / "sr.nii.gz"
    assert main(["sr", str(image), "-o", str(out), "-m", str(folder), "-s", "2"]) == 0
    ours = to_array(sitk.ReadImage(str(out)))
    caffe = load_caffemodel(path)
    expected = super_resolve_array(caffe.params, caffe.config, lr, (2.0, 2.0, 2.0))
    assert ours.shape == expected.shape == (12, 14, 16)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=0)
    zoom_only = scipy.ndimage.zoom(lr, 2, order=3)
    assert np.abs(expected - zoom_only).max() > 0.01 * lr.max()


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "z"])
def test_each_caffe_kernel_axis_acts_along_its_image_axis(tmp_path, axis):
    """A tap at Caffe index [0, 0, 2, 1, 1] (resp. [0, 0, 1, 2, 1], [0, 0, 1, 1, 2]) computes
    out(x, y, z) = in(x + 1, y, z) (resp. y + 1, z + 1) on SimpleITK's (x, y, z) index: a
    peak at (i, j, k) moves to (i - 1, j, k) (resp. ...), value 100 to rtol 1e-4."""
    w = np.zeros((1, 1, 3, 3, 3), np.float32)
    tap = [1, 1, 1]
    tap[axis] = 2
    w[(0, 0, *tap)] = 1.0
    caffemodel = tmp_path / "shift.caffemodel"
    caffemodel.write_bytes(caffe_net([w], [np.zeros(1, np.float32)], name="Shift"))
    image = sitk.Image((9, 11, 13), sitk.sitkFloat32) + 1.0
    peak = (4, 5, 6)
    image.SetPixel(peak, 100.0)
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    out = tmp_path / "out.nii.gz"
    assert main(["sr", str(tmp_path / "in.nii.gz"), "-o", str(out), "-m", str(caffemodel),
                 "-s", "1", "--no-residual"]) == 0
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == (9, 11, 13)
    moved = list(peak)
    moved[axis] -= 1
    moved = tuple(moved)
    voxels = sitk.GetArrayFromImage(result)  # (z, y, x)
    assert result.GetPixel(moved) == pytest.approx(100.0, rel=1e-4)
    assert result.GetPixel(moved) == voxels.max()
    assert np.sum(voxels > 2.0) == 1


# --- prototxt ----------------------------------------------------------------------------------


def test_matching_prototxt_is_accepted(tmp_path):
    """A deploy prototxt agreeing with the weights gives the same model as none."""
    path, _, _ = write_tiny(tmp_path / "tiny.caffemodel")
    proto = tmp_path / "tiny_deploy.prototxt"
    proto.write_text(tiny_prototxt())
    checked = load_caffemodel(path, proto)
    assert checked.config == TINY_CONFIG
    for name, leaves in load_caffemodel(path).params.items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(checked.params[name][leaf], value)


@pytest.mark.parametrize("mismatch", [dict(kernel=5), dict(outputs=(4, 8, 1)),
                                      dict(in_channels=2)],
                         ids=["kernel_size", "num_output", "input channels"])
def test_disagreeing_prototxt_raises_naming_it(tmp_path, mismatch):
    """kernel_size, num_output or input channels unlike the weights: SrrecnnError naming the
    prototxt file."""
    path, _, _ = write_tiny(tmp_path / "tiny.caffemodel")
    proto = tmp_path / "wrong_deploy.prototxt"
    proto.write_text(tiny_prototxt(**mismatch))
    with pytest.raises(SrrecnnError, match=re.escape(str(proto))):
        load_caffemodel(path, proto)


def test_parse_prototxt_nested_messages_and_both_forms():
    """'key: value', 'key { }' and 'key: { }' all parse; repeated keys collect in order."""
    text = 'a: 1\nb { c: 2 d { e: 3 } }\nb: { c: 4 }\na: 5'
    assert parse_prototxt(text) == {"a": [1, 5], "b": [{"c": [2], "d": [{"e": [3]}]},
                                                      {"c": [4]}]}


def test_parse_prototxt_ignores_comments():
    """'#' to end of line is a comment, whole-line or trailing."""
    text = '# header comment\nname: "net"  # trailing comment\n# x: 1\nlayer { # open\n}\n'
    assert parse_prototxt(text) == {"name": ["net"], "layer": [{}]}


def test_parse_prototxt_quoted_strings_and_scalars():
    """Quoted strings (double or single) stay strings, with '#', braces and spaces inside;
    bare numbers become int / float; bare words (enums) stay strings."""
    text = ('name: "a # b { c }" alt: \'single q\' num: "12"\n'
            'n: 64 lr: 0.1 std: 1e-3 neg: -1 engine: CAFFE')
    assert parse_prototxt(text) == {"name": ["a # b { c }"], "alt": ["single q"], "num": ["12"],
                                    "n": [64], "lr": [0.1], "std": [0.001], "neg": [-1],
                                    "engine": ["CAFFE"]}


def test_parse_prototxt_decodes_string_escapes():
    """Text-format escapes inside quotes are decoded: "a \\"q\\" b" -> 'a "q" b'."""
    assert parse_prototxt(r'name: "a \"q\" b"') == {"name": ['a "q" b']}


def test_parse_prototxt_unbalanced_braces_raise():
    """A message left open is a ValueError."""
    with pytest.raises(ValueError):
        parse_prototxt("layer { name: 'x'")


# --- bad model files ---------------------------------------------------------------------------


def _truncated(tmp_path: Path) -> Path:
    whole = caffe_net(*tiny_weights())
    path = tmp_path / "truncated.caffemodel"
    path.write_bytes(whole[:len(whole) // 2])
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "text.caffemodel"
    path.write_text(tiny_prototxt())
    return path


def _nifti(tmp_path: Path) -> Path:
    return write(np.ones((4, 5, 6), np.float32), tmp_path / "image.nii")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    return path


def _no_convolutions(tmp_path: Path) -> Path:
    path = tmp_path / "noconv.caffemodel"
    path.write_bytes(string_field(1, "NoConv") + layer("layer", "data", "HDF5Data", top=["d"])
                     + layer("layer", "relu", "ReLU", ["d"], ["d"]))
    return path


def _two_outputs(tmp_path: Path) -> Path:
    path = tmp_path / "two_outputs.caffemodel"
    path.write_bytes(caffe_net(*tiny_weights(channels=(1, 4, 2))))
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.caffemodel"


BAD_FILES = {"truncated": _truncated, "text": _text, "NIfTI": _nifti, "empty": _empty,
             "no convolutions": _no_convolutions, "last conv has 2 outputs": _two_outputs,
             "missing": _missing}


@pytest.mark.parametrize("make", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_model_file_raises_naming_it(tmp_path, make):
    """Truncated, text, NIfTI, empty, conv-less, 2-output and missing files: SrrecnnError whose
    message starts with the file's path."""
    path = make(tmp_path)
    with pytest.raises(SrrecnnError) as caught:
        load_caffemodel(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_bad_model_file_is_a_one_line_cli_error(tmp_path, capsys):
    """`srrecnn info TRUNCATED` exits 1 with one stderr line 'srrecnn: error: PATH: ...'."""
    path = _truncated(tmp_path)
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"srrecnn: error: {path}: ")
    assert err.count("\n") == 1


def test_layer_field_with_wrong_wire_type_raises_naming_the_file(tmp_path):
    """A NetParameter whose 'layer' (100) is a varint, not a message: SrrecnnError."""
    path = tmp_path / "wire.caffemodel"
    path.write_bytes(int_field(100, 5))
    with pytest.raises(SrrecnnError, match=re.escape(str(path))):
        load_caffemodel(path)


def test_even_kernels_raise_naming_the_file(tmp_path):
    """A net of 2^3 kernels (no centre voxel) is refused with SrrecnnError naming the file."""
    path = tmp_path / "even.caffemodel"
    path.write_bytes(caffe_net(*tiny_weights(k=2), pad=0))
    with pytest.raises(SrrecnnError, match=re.escape(str(path))):
        load_caffemodel(path)


# --- convert and info --------------------------------------------------------------------------


@pytest.fixture
def converted(tmp_path, capsys):
    """(caffemodel, folder written by `srrecnn convert`) for the tiny net."""
    path, _, _ = write_tiny(tmp_path / "tiny_IsoScalex2.caffemodel")
    folder = tmp_path / "tiny.model"
    assert main(["convert", str(path), "-o", str(folder)]) == 0
    capsys.readouterr()
    return path, folder


def test_converted_folder_loads_the_same_params(converted):
    """load_model(folder) gives exactly the caffemodel's params, config and trained scales."""
    path, folder = converted
    direct, loaded = load_caffemodel(path), load_model(folder)
    assert loaded.config == direct.config
    assert loaded.trained_scales == direct.trained_scales == [2.0]
    assert set(loaded.params) == set(direct.params)
    for name, leaves in direct.params.items():
        assert set(loaded.params[name]) == set(leaves)
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(np.asarray(loaded.params[name][leaf]), value)


def test_info_describes_a_converted_folder(converted, capsys):
    """`srrecnn info FOLDER` prints the parameter count (657), receptive field 7^3 and the
    caffemodel's sha256."""
    path, folder = converted
    assert main(["info", str(folder)]) == 0
    text = capsys.readouterr().out
    assert re.search(rf"parameters:\s+{TINY_PARAMETERS:,}\n", text)
    assert re.search(r"receptive field:\s+7x7x7 voxels", text)
    assert hashlib.sha256(path.read_bytes()).hexdigest() in text


def test_info_json_parses(converted, capsys):
    """`srrecnn info FOLDER --json` is JSON with parameters, receptive field, config, origin."""
    path, folder = converted
    assert main(["info", str(folder), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["parameters"] == TINY_PARAMETERS
    assert facts["receptive_field"] == 7
    assert facts["config"] == TINY_CONFIG.to_dict()
    assert facts["trained_scales"] == [2.0]
    assert facts["origin"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert facts["origin"]["file"] == path.name


def test_convert_refuses_an_existing_folder(converted, capsys):
    """Without --force, converting onto an existing folder exits 1 and leaves it untouched."""
    path, folder = converted
    before = folder_snapshot(folder)
    other, _, _ = write_tiny(path.with_name("other.caffemodel"), pad=0)
    assert main(["convert", str(other), "-o", str(folder)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert folder_snapshot(folder) == before


def test_convert_force_replaces_an_existing_folder(converted):
    """With --force the folder is replaced by the new model."""
    path, folder = converted
    other, _, _ = write_tiny(path.with_name("other.caffemodel"), pad=0)
    assert main(["convert", str(other), "-o", str(folder), "--force"]) == 0
    assert load_model(folder).config.padding == "edge_valid"


def test_convert_force_refuses_a_folder_holding_its_input(tmp_path, capsys):
    """``convert X.caffemodel -o DIR --force`` where DIR holds X (and other files): one
    error line, exit 1, every file as it was (--force used to delete DIR whole)."""
    folder = tmp_path / "models"
    folder.mkdir()
    path, _, _ = write_tiny(folder / "tiny.caffemodel")
    (folder / "notes.txt").write_text("mine")
    before = folder_snapshot(folder)
    assert main(["convert", str(path), "-o", str(folder), "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input" in err[0] and str(folder) in err[0], err
    assert folder_snapshot(folder) == before


def test_convert_force_refuses_a_folder_with_other_files(tmp_path, capsys):
    """A folder that is not a model folder of ours (here: a scan and a text file) is never
    replaced, with --force or without."""
    path, _, _ = write_tiny(tmp_path / "tiny.caffemodel")
    study = tmp_path / "study"
    study.mkdir()
    (study / "sub-01_T1w.nii.gz").write_bytes(b"\x1f\x8b scan")
    before = folder_snapshot(study)
    assert main(["convert", str(path), "-o", str(study), "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other than a model folder" in err[0], err
    assert folder_snapshot(study) == before


def test_convert_force_refuses_a_model_folder_with_an_extra_file(converted, capsys):
    """A model folder someone put another file in is no longer ours alone: refused."""
    path, folder = converted
    (folder / "README.md").write_text("card")
    before = folder_snapshot(folder)
    other, _, _ = write_tiny(path.with_name("other.caffemodel"), pad=0)
    assert main(["convert", str(other), "-o", str(folder), "--force"]) == 1
    assert "README.md" in capsys.readouterr().err
    assert folder_snapshot(folder) == before


def test_convert_force_refuses_a_training_run_folder(tmp_path, capsys):
    """A run folder (train_config.json) and its parts are never replaced."""
    path, _, _ = write_tiny(tmp_path / "tiny.caffemodel")
    run = tmp_path / "run"
    (run / "checkpoints" / "10").mkdir(parents=True)
    (run / "train_config.json").write_text("{}")
    for target in (run, run / "checkpoints", run / "checkpoints" / "10"):
        before = folder_snapshot(run)
        assert main(["convert", str(path), "-o", str(target), "--force"]) == 1
        assert "training run" in capsys.readouterr().err
        assert folder_snapshot(run) == before


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_model_that_is_not_a_regular_file_is_refused_before_reading(tmp_path, kind, capsys):
    """``-m /dev/zero`` (endless bytes: it was read until the machine ran out of memory)
    and ``-m`` at a FIFO (blocked forever) are one error line, exit 1, at once."""
    if kind == "device":
        model = Path("/dev/zero")
    else:
        model = tmp_path / "pipe"
        os.mkfifo(model)
    assert main(["info", str(model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a regular file" in err[0] and str(model) in err[0], err


def test_a_caffemodel_larger_than_the_limits_allow_is_refused_before_reading(
        tmp_path, monkeypatch, capsys):
    """A file larger than the weights of the largest accepted architecture is refused
    from its size (here a 3 KiB tiny model against a limit lowered to 1 KiB)."""
    path, _, _ = write_tiny(tmp_path / "tiny.caffemodel")
    monkeypatch.setattr(caffe_module, "MAX_CAFFEMODEL_BYTES", 1024)
    assert main(["info", str(path)]) == 1
    assert "larger than any model" in capsys.readouterr().err
