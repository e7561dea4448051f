"""Running the network on a volume: in z slabs, whole, or in exact tiles, within memory.

``plan`` picks how. **Slabs** (the CPU default, and what does not fit whole
elsewhere) stream the volume through the network a few z planes at a time:
each layer keeps the last ``k - 1`` planes of its input from the previous
slab, so every voxel is computed once, memory holds slabs instead of whole
activations, and one compilation serves every depth. The **whole** volume
runs at once on accelerators when its activations fit. **Tiles** carry a halo
of the receptive radius R and are for volumes too wide for even a thin slab
(or an explicit tile size). All are exact: for same-padded models every hidden
activation is multiplied by a mask of the volume, so the borders see the same
per-layer zero padding as the whole volume. Arrays are (x, y, z) image axes,
channels last.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srrecnn_jax import conv, model, operands
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import SrrecnnError

_traced: list[tuple[int, ...]] = []


def _network(params: model.Params, x: jax.Array, padding: str, mask: jax.Array | None,
             precision: str, algorithm: str) -> jax.Array:
    _traced.append(tuple(x.shape))  # Python side effect: runs once per trace, not per call
    return model.forward(params, x, padding, mask, precision, algorithm)


_forward = jax.jit(_network, static_argnames=("padding", "precision", "algorithm"))


def compiled_shapes() -> list[tuple[int, ...]]:
    """Network input shapes ``(1, X, Y, Z, C)`` traced for compilation in this process, in order.

    Each entry is one compilation of the network (for one parameter and mask
    layout). It shows how a volume ran: whole (its bucketed shape), in tiles
    (tile plus halo) or in z slabs (``Z`` = the slab's planes), and that volumes
    of one bucket share one compilation.
    ``jax.clear_caches()`` forgets the compilations but not this record.
    """
    return list(_traced)

# Float32 activations XLA keeps alive at once in a tile (inputs, outputs,
# workspace), counted per voxel and channel of the widest layer: about 2 with
# XLA's convolution (GPUs), 4 assumed; on CPU, with the Winograd and row-product
# algorithms, its buffer assignment measured 10.7-11.3 (10L-64, 96 x 112 x 96;
# a whole 196 x 232 x 188 volume peaked at 22 GiB).
_LIVE_ACTIVATIONS = {"cpu": 12}
_LIVE_ACTIVATIONS_DEFAULT = 4
#: Smallest tile edge auto_tile picks: smaller tiles cost more in halo than they save.
MIN_TILE = 16
#: z planes per slab (see ``plan``): measured best of 4-32 (benchmarks/README.md).
SLAB_PLANES = 16


def bytes_per_voxel_channel() -> int:
    """Bytes of device memory per voxel and channel of the widest layer (see auto_tile)."""
    return 4 * _LIVE_ACTIVATIONS.get(jax.default_backend(), _LIVE_ACTIVATIONS_DEFAULT)


def memory_budget() -> int:
    """Bytes a volume's activations may take on the first local device.

    On an accelerator: 70% of what it reports free; on CPU: half the host's
    available memory.
    """
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(0.7 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 8 << 30
    return available // 2


def auto_tile(config: ModelConfig, shape: Sequence[int], budget: int | None = None) -> int | None:
    """Tile edge to use for a volume of ``shape``, or None when it fits whole."""
    budget = memory_budget() if budget is None else budget
    per_voxel = _bytes_per_voxel(config)
    r = config.receptive_radius
    whole = math.prod(s + 2 * r for s in shape) * per_voxel
    if whole <= budget:
        return None
    side = round((budget / per_voxel) ** (1 / 3))
    while side ** 3 * per_voxel > budget:  # guard the float cube root
        side -= 1
    return max(side - 2 * r, MIN_TILE)


def _bytes_per_voxel(config: ModelConfig) -> int:
    return bytes_per_voxel_channel() * max(max(config.filters), config.in_channels)


def plan(config: ModelConfig, shape: Sequence[int], bucket: int = 1,
         budget: int | None = None) -> tuple[str, int | None]:
    """How ``run_network`` runs a volume of ``shape`` (x, y, z) when no tile is given.

    Returns ``("slabs", planes)``, ``("whole", None)`` or ``("tiles", edge)``. On CPU,
    z slabs of up to ``SLAB_PLANES`` planes (fewer if memory is short; with
    ``bucket`` 1, as few as the same number of slabs needs, since every slab
    runs whole and planes beyond the volume are wasted): they keep each
    activation's slab in cache-sized pieces and measured faster than the whole
    volume at once, besides using a fraction of its memory. Elsewhere the whole
    volume when it fits the memory budget, else slabs. Tiles only when not even a
    one-plane slab fits.
    """
    budget = memory_budget() if budget is None else budget
    per_voxel, r = _bytes_per_voxel(config), config.receptive_radius
    full = _round_up(shape, bucket)
    if jax.default_backend() != "cpu" and math.prod(f + 2 * r for f in full) * per_voxel <= budget:
        return "whole", None
    plane_bytes = (full[0] + 2 * r) * (full[1] + 2 * r) * per_voxel
    planes = min(SLAB_PLANES, budget // plane_bytes - 2)  # a slab and its carried planes
    if planes >= 1 and bucket == 1:  # as few planes as the same number of slabs needs
        stream = shape[2] + (r if config.padding == "same" else 2 * r)
        planes = math.ceil(stream / math.ceil(stream / planes))
    if planes >= 1:
        return "slabs", planes
    return "tiles", auto_tile(config, full, budget)


def run_network(params: model.Params, config: ModelConfig, volume: np.ndarray,
                tile: int | None = None, residual: bool | None = None,
                bucket: int = 1, devices: Sequence[jax.Device] | None = None,
                precision: str = "fp32", algorithm: str = "auto") -> np.ndarray:
    """Network (plus residual) on one volume.

    Args:
      params: model parameters (NumPy, or JAX arrays on the device to use).
      config: architecture.
      volume: ``(X, Y, Z, C_in)`` float32 network input.
      tile: tile edge in output voxels; None lets ``plan`` choose z slabs, the
        whole volume or tiles, by backend and memory.
      residual: override ``config.residual``.
      bucket: pad a volume up to a multiple of this many voxels per axis (slabs:
        along x and y only) with results unchanged, so volumes of nearby sizes
        share one compilation.
      devices: where tiles run, round robin (default: the default device).
        A whole volume runs on the default device.
      precision: arithmetic of the convolutions, one of ``config.PRECISIONS``.
      algorithm: their algorithm, one of ``conv.ALGORITHMS``: ``auto`` (fastest;
        on CPU within 3e-5 of the output range of exact arithmetic) or ``exact``
        (exact to float32 rounding).

    Returns:
      ``(X, Y, Z)`` float32.
    """
    volume = np.asarray(volume, np.float32)
    residual = config.residual if residual is None else residual
    try:
        operands.check_precision(precision)
    except ValueError as e:
        raise SrrecnnError(str(e), "precision") from None
    how, size = plan(config, volume.shape[:3], bucket) if tile is None else ("tiles", tile)
    if how == "whole":
        y = _run_padded(params, config, volume, bucket, precision, algorithm)
    elif how == "slabs":
        y = run_slabs(params, config, volume, size, bucket, precision, algorithm)
    else:
        y = _run_tiles(params, config, volume, size, devices, precision, algorithm)
    return y + volume[..., 0] if residual else y


def _slab_layer(kernel: jax.Array, bias: jax.Array, x: jax.Array, carry: jax.Array | None,
                prefix: jax.Array | None, scratch: jax.Array | None, start: jax.Array,
                depth: jax.Array,
                in_plane: jax.Array | None, *, same: bool, last: bool, border_in: bool,
                border_out: bool, precision: str, algorithm: str,
                record: bool) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """One layer of the network on one slab of ``c`` z planes; see ``run_slabs``.

    ``x``: ``(X, Y, c, C_in)``, the layer's input planes from ``start`` on (volume
    coordinates), after ``carry``: the last ``k - 1`` planes of its input from the
    previous slab; ``carry`` None: ``x`` already starts with them (``(X, Y, k - 1 + c,
    C_in)``, written there by the previous layer). The output starts ``h = (k - 1) / 2``
    planes before ``start``; for ``same`` models hidden planes outside ``0 .. depth - 1``
    and voxels outside ``in_plane`` are zeroed, which is the whole volume's per-layer
    zero padding. ``prefix``: None, or the next layer's carry, put in front of the
    output, so that the next layer reads its input whole without a copy to join them.
    ``scratch``: None, or a dead activation of the output's shape to write it into (see
    ``conv.relu_layer_slab``).

    Returns the layer's ``(X', Y', c, C_out)`` (after the prefix's planes;
    ``(X', Y', c)`` for the ``last``), the new carry (None when ``carry`` is) and the
    new prefix, the output's last planes (None when ``prefix`` is). One function per
    layer, not per network, so that the hidden layers of one shape share one trace and
    one compilation: a tenth of the start-up work.

    ``border_in`` / ``border_out`` (CPU, ``same`` 3^3 models): the input (and its
    carry) / the output has a zero x and y border one voxel wide, so that the
    Winograd hidden layers (``conv.relu_layer_slab``) read their padding in place and
    write the next layer's, bias, ReLU and masks included, without a copy of the slab.
    """
    if record:  # the first layer: once per trace of a network input shape, as _network
        _traced.append((1, *x.shape))
    k = kernel.shape[0]
    h = k // 2
    if carry is not None:
        x = jnp.concatenate([carry, x], axis=2)  # (X, Y, k - 1 + c, C)
        carry = x[:, :, x.shape[2] - (k - 1):]
    index = start - h + jnp.arange(x.shape[2] - 2 * h)
    planes = ((index >= 0) & (index < depth)).astype(jnp.float32)
    if same and not border_in:
        x = jnp.pad(x, ((h, h), (h, h), (0, 0), (0, 0)))
    if border_out and conv.winograd_applies(kernel):
        y = conv.relu_layer_slab(x, kernel, bias, planes, in_plane, precision, algorithm, prefix,
                                 scratch)
    else:
        y = (conv.conv3d(x[None], kernel, "VALID", precision, algorithm)[0]
             + bias.astype(jnp.float32))
        if last:
            return y[..., 0], carry, None
        y = jax.nn.relu(y)
        if same:
            y = y * planes[:, None]
            if in_plane is not None:
                y = y * in_plane
        if border_out:
            y = jnp.pad(y, ((1, 1), (1, 1), (0, 0), (0, 0)))
        if prefix is not None:
            y = jnp.concatenate([prefix, y], axis=2)
    if prefix is not None:
        prefix = y[:, :, y.shape[2] - prefix.shape[2]:]
    return y, carry, prefix


_slab = jax.jit(_slab_layer, static_argnames=("same", "last", "border_in", "border_out",
                                             "precision", "algorithm", "record"),
                donate_argnums=(3, 4, 5))


def run_slabs(params: model.Params, config: ModelConfig, volume: np.ndarray,
              planes: int, bucket: int = 1, precision: str = "fp32",
              algorithm: str = "auto") -> np.ndarray:
    """Network without residual, streamed through z slabs of ``planes`` planes.

    Each layer keeps the last ``k - 1`` planes of its input from the previous
    slab, so every voxel is computed once (no halo recomputed) and memory holds
    a few slabs of each activation instead of whole volumes. The slab shape is
    fixed: volumes of one in-plane size (after padding X and Y to a multiple of
    ``bucket``) share one compilation whatever their depth. Results equal the
    whole-volume run to float32 rounding. ``(X, Y, Z, C)`` -> ``(X, Y, Z)``.
    """
    shape, channels = volume.shape[:3], volume.shape[3]
    names = model.layer_names(config)
    params = jax.device_put(params)  # once, not at each layer's call
    halo = sum(params[n]["kernel"].shape[0] // 2 for n in names)  # the receptive radius
    same = config.padding == "same"
    full = _round_up(shape[:2], bucket)
    in_plane = None
    if same:
        first = 0
        steps = math.ceil((shape[2] + halo) / planes)
        x = np.zeros(full + [steps * planes, channels], np.float32)
        x[:shape[0], :shape[1], :shape[2]] = volume
        if bucket > 1:  # always masked, so that a volume filling its bucket shares the trace
            in_plane = np.zeros(full + [1, 1], np.float32)
            in_plane[:shape[0], :shape[1]] = 1.0
    else:  # edge_valid: the model's edge padding, then valid convolutions
        first = -halo
        steps = math.ceil((shape[2] + 2 * halo) / planes)
        padded = model.pad_input(volume, config)
        x = np.zeros([f + 2 * halo for f in full] + [steps * planes, channels], np.float32)
        x[:padded.shape[0], :padded.shape[1], :padded.shape[2]] = padded
    # CPU, same 3^3 models: activations keep a zero x and y border between layers.
    bordered = same and model.keeps_zero_border(params, algorithm)
    carries, width = [], x.shape[:2]
    for i, name in enumerate(names):
        kernel = params[name]["kernel"]
        k = kernel.shape[0]
        border = 2 if bordered and i > 0 else 0
        carries.append(jnp.zeros((width[0] + border, width[1] + border, k - 1, kernel.shape[3]),
                                 jnp.float32))
        if not same:
            width = tuple(w - (k - 1) for w in width)
    out = np.zeros((*full, steps * planes), np.float32)
    lag = first - halo  # volume index of the first output plane of slab 0
    # Hidden activations (X + 2, Y + 2, k - 1 + planes, C): one to start the rotation.
    spare = jnp.zeros((*carries[-1].shape[:2], carries[-1].shape[2] + planes,
                       carries[-1].shape[3]), jnp.float32) if bordered else None
    for step in range(steps):
        y, start = x[:, :, step * planes:(step + 1) * planes], first + step * planes
        for i, name in enumerate(names):
            kernel = params[name]["kernel"]
            last = i == len(names) - 1
            # Bordered hidden layers write the next layer's carry in front of their output.
            carry = None if bordered and i > 0 else carries[i]
            prefix = carries[i + 1] if bordered and not last else None
            # Bordered hidden layers write into a dead activation of their output's shape
            # (the input of the layer before), donated, instead of a fresh zero array.
            scratch = None
            if bordered and 0 < i and not last:
                scratch, spare = spare, y
            y, carry, prefix = _slab(kernel, params[name]["bias"], y, carry, prefix, scratch,
                                     start, shape[2], in_plane, same=same, last=last,
                                     border_in=bordered and i > 0,
                                     border_out=bordered and not last,
                                     precision=operands.layer_precision(precision, i),
                                     algorithm=algorithm,
                                     record=i == 0)
            if carry is not None:
                carries[i] = carry
            if prefix is not None:
                carries[i + 1] = prefix
            start -= kernel.shape[0] // 2
        lo = lag + step * planes
        keep = slice(max(lo, 0), min(lo + planes, shape[2]))
        if keep.start < keep.stop:
            out[:, :, keep] = np.asarray(y)[:, :, keep.start - lo:keep.stop - lo]
    return out[:shape[0], :shape[1], :shape[2]]


def _round_up(shape: Sequence[int], multiple: int) -> list[int]:
    return [math.ceil(s / multiple) * multiple for s in shape]


def _run_padded(params: model.Params, config: ModelConfig, volume: np.ndarray,
                bucket: int, precision: str = "fp32", algorithm: str = "auto") -> np.ndarray:
    """The whole volume at once, padded on the far side to a multiple of ``bucket``.

    ``same`` models: zeros beyond the volume, kept zero in every hidden layer
    by the mask, are exactly the per-layer zero padding. ``edge_valid``: the
    model's own edge padding, then valid convolutions.
    """
    shape, channels = volume.shape[:3], volume.shape[3]
    full = _round_up(shape, bucket)
    inside = tuple(slice(0, s) for s in shape)
    if config.padding == "same":
        x = np.zeros(full + [channels], np.float32)  # (X', Y', Z', C)
        x[inside] = volume
        mask = None
        if bucket > 1:  # always masked, so that a volume filling its bucket shares the trace
            mask = np.zeros([1] + full + [1], np.float32)
            mask[(0,) + inside] = 1.0
        y = _forward(params, x[None], "SAME", mask, precision, algorithm)
    else:
        r = config.receptive_radius
        x = np.zeros([f + 2 * r for f in full] + [channels], np.float32)
        x[tuple(slice(0, s + 2 * r) for s in shape)] = model.pad_input(volume, config)
        y = _forward(params, x[None], "VALID", None, precision, algorithm)
    return np.asarray(y)[(0,) + inside + (0,)]


def _run_tiles(params: model.Params, config: ModelConfig, volume: np.ndarray,
               tile: int, devices: Sequence[jax.Device] | None = None,
               precision: str = "fp32", algorithm: str = "auto") -> np.ndarray:
    """Network without residual, tile by tile; ``(X, Y, Z, C)`` -> ``(X, Y, Z)``.

    The volume is padded by the receptive radius R as the model pads it (zeros
    for ``same``, edge replication for ``edge_valid``) and further on the far
    side to whole tiles. Each tile of ``tile + 2R`` voxels runs through VALID
    convolutions to ``tile`` output voxels; for ``same`` models a mask of the
    volume keeps every hidden activation zero outside it, as the per-layer
    zero padding of a whole-volume run does. Tiles are dispatched
    asynchronously, round robin over ``devices``, a few in flight per device,
    so host-side slicing overlaps device work.
    """
    if tile < 1:
        raise SrrecnnError(f"must be a positive number of voxels, got {tile}", "tile")
    shape, r = volume.shape[:3], config.receptive_radius
    sizes = [min(tile, s) for s in shape]
    counts = [math.ceil(s / t) for s, t in zip(shape, sizes)]
    grid = [n * t + 2 * r for n, t in zip(counts, sizes)]
    padded = np.zeros(grid + [volume.shape[3]], np.float32)  # (X', Y', Z', C)
    padded[tuple(slice(0, s + 2 * r) for s in shape)] = model.pad_input(volume, config)
    mask = None
    if config.padding == "same":
        mask = np.zeros(grid + [1], np.float32)
        mask[tuple(slice(r, r + s) for s in shape)] = 1.0
    devices = list(devices or [jax.devices()[0]])
    placed = [jax.device_put(params, d) for d in devices]
    out = np.empty(shape, np.float32)
    pending: list[tuple[jax.Array, list[int]]] = []

    def collect(result: jax.Array, lo: list[int]) -> None:
        y = np.asarray(result)[0, ..., 0]
        hi = [min(a + t, s) for a, t, s in zip(lo, sizes, shape)]
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = y[tuple(slice(0, b - a)
                                                                  for a, b in zip(lo, hi))]

    for n, index in enumerate(itertools.product(*(range(c) for c in counts))):
        lo = [i * t for i, t in zip(index, sizes)]
        window = tuple(slice(a, a + t + 2 * r) for a, t in zip(lo, sizes))
        device = devices[n % len(devices)]
        block = jax.device_put(padded[window][None], device)
        block_mask = None if mask is None else jax.device_put(mask[window][None], device)
        pending.append((_forward(placed[n % len(devices)], block, "VALID", block_mask,
                                 precision, algorithm), lo))
        if len(pending) > 2 * len(devices):
            collect(*pending.pop(0))
    for result, lo in pending:
        collect(result, lo)
    return out
