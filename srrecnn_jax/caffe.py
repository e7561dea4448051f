"""Read Caffe ``.caffemodel`` weights (and ``.prototxt`` nets) without Caffe.

A caffemodel is a binary protobuf ``NetParameter``. We decode the protobuf
wire format directly (a few dozen lines, no generated classes) and read only
what a chain of 3-D convolutions needs. Field numbers are those of Caffe's
``caffe.proto``: new-style ``layer`` (100) and legacy V1 ``layers`` (2),
blobs with an N-D ``shape`` or the legacy num/channels/height/width.

Caffe stores convolution weights as ``(out, in, kx, ky, kz)`` for arrays in
(x, y, z) order (the original swapped SimpleITK's (z, y, x) arrays to
(x, y, z)); we return kernels as ``(kx, ky, kz, in, out)``, also for (x, y, z)
arrays, so no image axis is flipped or swapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from srrecnn_jax.config import MAX_PARAMETERS, ModelConfig
from srrecnn_jax.errors import SrrecnnError

# --- protobuf wire format -------------------------------------------------

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _WireError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint too long")


def _decode(buf: memoryview) -> dict[int, list[tuple[int, Any]]]:
    """Split one message into ``{field: [(wire_type, value), ...]}``."""
    if not isinstance(buf, memoryview):  # a varint where a message belongs
        raise _WireError("expected a length-delimited message")
    fields: dict[int, list[tuple[int, Any]]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _BYTES:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _WireError("truncated length-delimited field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            if pos + size > len(buf):
                raise _WireError("truncated fixed-width field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise _WireError(f"unsupported wire type {wire}")
        fields.setdefault(field, []).append((wire, value))
    return fields


def _string(fields: dict, number: int, default: str = "") -> str:
    values = fields.get(number)
    if not values:
        return default
    if values[-1][0] != _BYTES:
        raise _WireError(f"field {number} should be a string")
    return bytes(values[-1][1]).decode("utf-8", "replace")


def _ints(fields: dict, number: int) -> list[int]:
    """A repeated integer field, packed or not."""
    out: list[int] = []
    for wire, value in fields.get(number, []):
        if wire == _VARINT:
            out.append(value)
        elif wire == _BYTES:
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v)
        else:
            raise _WireError("integer field with a fixed-width wire type")
    return out


def _reals(fields: dict, number: int, dtype: str) -> np.ndarray:
    """A repeated float (``<f4``) or double (``<f8``) field, packed or not."""
    fixed = _FIXED32 if dtype == "<f4" else _FIXED64
    parts = []
    for wire, value in fields.get(number, []):
        if wire not in (_BYTES, fixed) or len(value) % np.dtype(dtype).itemsize:
            raise _WireError(f"field {number} is not a packed {dtype} array")
        parts.append(np.frombuffer(bytes(value), dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _blob(buf: memoryview) -> np.ndarray:
    """A BlobProto as an array of its stated shape (float32)."""
    f = _decode(buf)
    data = _reals(f, 5, "<f4")
    if data.size == 0:
        data = _reals(f, 8, "<f8").astype(np.float32)
    if 7 in f:
        shape = tuple(_ints(_decode(f[7][-1][1]), 1))
    else:  # legacy 4-D blob; Caffe writes (1, 1, 1, n) for biases
        shape = tuple(_ints(f, n)[-1] if _ints(f, n) else 1 for n in (1, 2, 3, 4))
    if int(np.prod(shape)) != data.size:
        raise _WireError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(field: int, payload: bytes | str | int) -> bytes:
    """One field: a varint for ints, length-delimited for bytes and strings."""
    if isinstance(payload, int):
        return _key(field, _VARINT) + _encode_varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _key(field, _BYTES) + _encode_varint(len(data)) + data


# --- NetParameter ---------------------------------------------------------

_V1_CONVOLUTION = 4


@dataclasses.dataclass
class _Conv:
    name: str
    weight: np.ndarray  # as stored: (out, in, ...)
    bias: np.ndarray
    kernel: list[int]  # from convolution_param, [] if absent
    pad: list[int] | None  # None when no convolution_param was stored
    num_output: int | None


def _conv_param(buf: memoryview | None) -> tuple[list[int], list[int] | None, int | None]:
    if buf is None:
        return [], None, None
    f = _decode(buf)
    kernel = _ints(f, 4) or [k for k in _ints(f, 11) + _ints(f, 12)]
    pad = _ints(f, 3) or (_ints(f, 9) + _ints(f, 10)) or [0]
    num = _ints(f, 1)
    return kernel, pad, (num[-1] if num else None)


def _convolutions(data: bytes) -> tuple[str, list[_Conv]]:
    net = _decode(memoryview(data))
    convs = []
    # new style: LayerParameter, field 100; name 1, type 2, blobs 7, convolution_param 106
    # V1: V1LayerParameter, field 2; name 4, type 5 (enum), blobs 6, convolution_param 10
    styles = ((100, 1, 2, 7, 106), (2, 4, 5, 6, 10))
    for field, f_name, f_type, f_blobs, f_conv in styles:
        for _, raw in net.get(field, []):
            layer = _decode(raw)
            if f_type == 2:
                is_conv = _string(layer, 2) == "Convolution"
            else:
                is_conv = bool(layer.get(5)) and layer[5][-1][1] == _V1_CONVOLUTION
            if not is_conv:
                continue
            name = _string(layer, f_name)
            blobs = [_blob(b) for _, b in layer.get(f_blobs, [])]
            if not blobs:
                raise _WireError(f"convolution layer {name!r} has no weights")
            bias = blobs[1].reshape(-1) if len(blobs) > 1 else None
            conv = layer.get(f_conv)
            kernel, pad, num = _conv_param(conv[-1][1] if conv else None)
            convs.append(_Conv(name, blobs[0], bias, kernel, pad, num))
    return _string(net, 1), convs


@dataclasses.dataclass
class CaffeModel:
    """Weights and architecture read from a caffemodel.

    Attributes:
      params: ``{"convI": {"kernel": (k, k, k, in, out), "bias": (out,)}}``, float32 NumPy.
      config: the inferred architecture.
      net_name: the ``NetParameter.name`` (e.g. ``VDSR3D``, ``SRCNN3D``).
      layer_names: the Caffe layer names, in order.
      trained_scales: scale factors named in the file name (``IsoScalex2``), or None.
      source: ``{"file": name, "sha256": hex}``.
    """

    params: dict[str, dict[str, np.ndarray]]
    config: ModelConfig
    net_name: str
    layer_names: list[str]
    trained_scales: list[float] | None
    source: dict[str, str]


def _kernel_edge(conv: _Conv, path: Path) -> int:
    w = conv.weight
    out_c, in_c = (w.shape + (1, 1))[:2]
    per_filter = w.size // max(out_c * in_c, 1)
    k = round(per_filter ** (1 / 3))
    if w.ndim not in (4, 5) or k ** 3 != per_filter or (w.ndim == 5 and w.shape[2:] != (k,) * 3):
        raise SrrecnnError(
            f"{path}: layer {conv.name!r} has weights of shape {w.shape}, not a cubic 3-D kernel")
    if k % 2 == 0:
        raise SrrecnnError(f"{path}: layer {conv.name!r} has an even {k}^3 kernel; only odd "
                           "kernels have a centre voxel")
    return k


def _trained_scales(name: str) -> list[float] | None:
    m = re.search(r"[Ss]cale_?x(\d+(?:\.\d+)?(?:x\d+(?:\.\d+)?)*)", name)
    return [float(s) for s in m.group(1).split("x")] if m else None


#: The largest caffemodel read: the float32 weights of the largest architecture accepted
#: (``config.MAX_PARAMETERS``, 512 MiB) and room for the layers' descriptions. A larger
#: file (``/dev/zero``'s endless bytes included) is refused before it is read.
MAX_CAFFEMODEL_BYTES = 4 * MAX_PARAMETERS + 2**26


def _read_model_file(path: Path) -> bytes:
    """The bytes of a caffemodel, refused by name before reading when it is not a regular
    file (a FIFO would block, a device never end) or is larger than any model accepted."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such model file") from None
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot read model file ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SrrecnnError(f"{path}: not a regular file (a device, pipe or socket); a model "
                           "is a .caffemodel file or a model folder")
    if info.st_size > MAX_CAFFEMODEL_BYTES:
        raise SrrecnnError(f"{path}: {info.st_size / 2**20:.0f} MiB, larger than any model "
                           f"within the architecture limits ({MAX_PARAMETERS:,} parameters)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot read model file ({e.strerror})") from None


def load_caffemodel(path: str | Path, prototxt: str | Path | None = None) -> CaffeModel:
    """Read a binary caffemodel and infer the network it holds.

    Args:
      path: the ``.caffemodel`` file.
      prototxt: optional text net definition; its convolution layers' kernel
        sizes, pads and outputs must agree with the weights.

    Returns:
      A :class:`CaffeModel`.

    Raises:
      SrrecnnError: naming the file, if it is missing, truncated, not a Caffe
        model, or not a chain of cubic 3-D convolutions ending in one channel.
    """
    path = Path(path)
    data = _read_model_file(path)
    try:
        net_name, convs = _convolutions(data)
    except (_WireError, ValueError, IndexError, UnicodeDecodeError) as e:
        raise SrrecnnError(f"{path}: not a binary Caffe model, or truncated ({e})") from None
    if not convs:
        raise SrrecnnError(f"{path}: no convolution layers with weights: not a trained Caffe model")

    params, kernels, filters = {}, [], []
    in_channels = convs[0].weight.shape[1] if convs[0].weight.ndim > 1 else 1
    c_in = in_channels
    for i, conv in enumerate(convs):
        k = _kernel_edge(conv, path)
        out_c, layer_in = conv.weight.shape[0], conv.weight.shape[1]
        if layer_in != c_in:
            raise SrrecnnError(f"{path}: layer {conv.name!r} takes {layer_in} channels but the "
                               f"previous layer gives {c_in}: not a plain convolution chain")
        if conv.bias is None or conv.bias.size != out_c:
            raise SrrecnnError(f"{path}: layer {conv.name!r} lacks a bias of {out_c} values")
        if conv.kernel and set(conv.kernel) != {k}:
            raise SrrecnnError(f"{path}: layer {conv.name!r} declares kernel {conv.kernel} "
                               f"but its weights are {k}^3")
        weight = conv.weight.reshape(out_c, layer_in, k, k, k)
        params[f"conv{i + 1}"] = {
            "kernel": np.ascontiguousarray(weight.transpose(2, 3, 4, 1, 0), dtype=np.float32),
            "bias": conv.bias.astype(np.float32),
        }
        kernels.append(k)
        filters.append(out_c)
        c_in = out_c
    if filters[-1] != 1:
        raise SrrecnnError(f"{path}: the last convolution has {filters[-1]} outputs, expected 1")

    pads = [c.pad for c in convs]
    if prototxt is not None:
        pads = _check_prototxt(Path(prototxt), convs, kernels, filters, in_channels)
    padding = _padding_scheme(path, kernels, pads)
    try:
        config = ModelConfig(kernels=tuple(kernels), filters=tuple(filters),
                             in_channels=in_channels, residual=padding == "same",
                             padding=padding)
    except ValueError as e:  # beyond the architecture limits
        raise SrrecnnError(f"{path}: {e}") from None
    return CaffeModel(params=params, config=config, net_name=net_name,
                      layer_names=[c.name for c in convs],
                      trained_scales=_trained_scales(path.name),
                      source={"file": path.name, "sha256": hashlib.sha256(data).hexdigest()})


def _padding_scheme(path: Path, kernels: list[int], pads: list[list[int] | None]) -> str:
    """``same`` when every pad is (k-1)/2, ``edge_valid`` when every pad is 0.

    Without stored pads: uniform kernels mean a ReCNN (same), mixed kernels
    the SRCNN3D family (edge-padded input, valid convolutions).
    """
    if all(p is None for p in pads):
        return "same" if len(set(kernels)) == 1 else "edge_valid"
    if all(p is not None and set(p) == {(k - 1) // 2} for p, k in zip(pads, kernels)):
        return "same"
    if all(p is not None and set(p) == {0} for p in pads):
        return "edge_valid"
    raise SrrecnnError(f"{path}: unsupported padding {pads} for kernels {kernels}: expected "
                       "(k-1)/2 on every layer (same) or 0 on every layer (SRCNN3D)")


# --- prototxt (protobuf text format) ----------------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
                    r'|[{}:\[\],;]|[^\s{}:\[\],;#]+')


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [value, ...]}`` (messages as dicts)."""
    tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    pos = 0

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        out: dict[str, list[Any]] = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise ValueError(f"field {name!r} has no value")
            if tokens[pos] == "{":
                pos += 1
                value = message("}")
                pos += 1
            elif tokens[pos] == "[":
                pos += 1
                while tokens[pos] != "]":
                    if tokens[pos] != ",":
                        out.setdefault(name, []).append(_scalar(tokens[pos]))
                    pos += 1
                pos += 1
                continue
            else:
                value = _scalar(tokens[pos])
                pos += 1
            out.setdefault(name, []).append(value)
            while pos < len(tokens) and tokens[pos] in ",;":
                pos += 1
        if end is not None and pos >= len(tokens):
            raise ValueError("unbalanced braces")
        return out

    return message(None)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _scalar(token: str) -> Any:
    if token[0] in "\"'":
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), token[1:-1])
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    if token in "{}:":
        raise ValueError(f"unexpected {token!r}")
    return token


def _check_prototxt(path: Path, convs: list[_Conv], kernels: list[int], filters: list[int],
                    in_channels: int) -> list[list[int]]:
    """Check a deploy prototxt against the weights; return its pads per layer."""
    try:
        net = parse_prototxt(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such prototxt file") from None
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as e:
        raise SrrecnnError(f"{path}: not a readable prototxt ({e})") from None
    layers = {}
    for layer in net.get("layer", []) + net.get("layers", []):
        if str(layer.get("type", [""])[-1]).upper() == "CONVOLUTION":
            layers[str(layer.get("name", [""])[-1])] = layer.get("convolution_param", [{}])[-1]
    if [c.name for c in convs] != list(layers):
        raise SrrecnnError(f"{path}: convolution layers {list(layers)} do not match the "
                           f"weights' {[c.name for c in convs]}")
    pads = []
    for conv, k, f in zip(convs, kernels, filters):
        p = layers[conv.name]
        declared_k = set(p.get("kernel_size", []) + p.get("kernel_h", []) + p.get("kernel_w", []))
        if declared_k != {k} or p.get("num_output", [f])[-1] != f:
            raise SrrecnnError(f"{path}: layer {conv.name!r} declares kernel {sorted(declared_k)} "
                               f"x {p.get('num_output')} but the weights are {k}^3 x {f}")
        pads.append(list(p.get("pad", [])) or [0])
    shapes = net.get("input_shape", [])
    dims = shapes[0].get("dim", []) if shapes else net.get("input_dim", [])
    if len(dims) > 1 and dims[1] != in_channels:
        raise SrrecnnError(f"{path}: input has {dims[1]} channels but the weights take "
                           f"{in_channels}")
    return pads


# --- writing ------------------------------------------------------------------


def _blob_bytes(array: np.ndarray) -> bytes:
    """A BlobProto: N-D shape (field 7) and packed little-endian float32 data (5)."""
    dims = b"".join(_encode_varint(int(n)) for n in array.shape)
    return (_field(7, _field(1, dims))
            + _field(5, np.ascontiguousarray(array, "<f4").tobytes()))


def caffemodel_bytes(params: dict, config: ModelConfig, net_name: str = "VDSR3D") -> bytes:
    """A binary NetParameter with new-style layers that Caffe (and ``load_caffemodel``) reads.

    Convolutions ``conv1..convN`` carry their weights as ``(out, in, kx, ky, kz)``
    (arrays in (x, y, z) order, as the original) and bias blobs, with
    ``convolution_param`` (num_output, pad, kernel_size, stride); ReLU layers
    run in place between them. The residual addition is not a layer, as in
    the published models.
    """
    layers = []
    bottom = "data"
    for i, (k, f) in enumerate(zip(config.kernels, config.filters)):
        name = f"conv{i + 1}"
        kernel = np.asarray(params[name]["kernel"], np.float32)
        pad = (k - 1) // 2 if config.padding == "same" else 0
        conv_param = (_field(1, f) + _field(3, pad) + _field(4, k) + _field(6, 1))
        layer = (_field(1, name) + _field(2, "Convolution") + _field(3, bottom) + _field(4, name)
                 + _field(7, _blob_bytes(kernel.transpose(4, 3, 0, 1, 2)))
                 + _field(7, _blob_bytes(np.asarray(params[name]["bias"], np.float32)))
                 + _field(106, conv_param))
        layers.append(_field(100, layer))
        if i < config.layers - 1:
            relu = _field(1, f"relu{i + 1}") + _field(2, "ReLU") + _field(3, name) + _field(4, name)
            layers.append(_field(100, relu))
        bottom = name
    return _field(1, net_name) + b"".join(layers)
