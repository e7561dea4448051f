"""Running the network on a whole volume or in exact tiles, within a memory budget.

A volume ``(X, Y, Z, C)`` runs at once when its activations fit the device's
memory, else in tiles. Tiles are exact: a tile carries a halo of the receptive
radius R, and for same-padded models every hidden activation is multiplied by
a mask of the volume, so a tile at the border sees the same per-layer zero
padding as the whole volume. All tiles of a run share one shape, hence one
compilation. Arrays are (x, y, z) image axes, channels last.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

import jax
import numpy as np

from srrecnn_jax import conv, model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import SrrecnnError

_traced: list[tuple[int, ...]] = []


def _network(params: model.Params, x: jax.Array, padding: str, mask: jax.Array | None,
             precision: str) -> jax.Array:
    _traced.append(tuple(x.shape))  # Python side effect: runs once per trace, not per call
    return model.forward(params, x, padding, mask, precision)


_forward = jax.jit(_network, static_argnames=("padding", "precision"))


def compiled_shapes() -> list[tuple[int, ...]]:
    """Network input shapes ``(1, X, Y, Z, C)`` traced for compilation in this process, in order.

    Each entry is one compilation of the network (for one parameter and mask
    layout). It shows how a volume ran: whole (its bucketed shape) or in tiles
    (tile plus halo), and that volumes of one bucket share one compilation.
    ``jax.clear_caches()`` forgets the compilations but not this record.
    """
    return list(_traced)

# Float32 activations XLA keeps alive at once in a tile (inputs, outputs,
# workspace), counted per voxel and channel of the widest layer: about 2 with
# XLA's convolution (GPUs), 4 assumed; on CPU, with the Winograd and row-product
# formulations, its buffer assignment measured 10.7-11.3 (10L-64, 96 x 112 x 96;
# a whole 196 x 232 x 188 volume peaked at 22 GiB).
_LIVE_ACTIVATIONS = {"cpu": 12}
_LIVE_ACTIVATIONS_DEFAULT = 4
#: Smallest tile edge auto_tile picks: smaller tiles cost more in halo than they save.
MIN_TILE = 16


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
    per_voxel = bytes_per_voxel_channel() * max(max(config.filters), config.in_channels)
    r = config.receptive_radius
    whole = math.prod(s + 2 * r for s in shape) * per_voxel
    if whole <= budget:
        return None
    side = round((budget / per_voxel) ** (1 / 3))
    while side ** 3 * per_voxel > budget:  # guard the float cube root
        side -= 1
    return max(side - 2 * r, MIN_TILE)


def run_network(params: model.Params, config: ModelConfig, volume: np.ndarray,
                tile: int | None = None, residual: bool | None = None,
                bucket: int = 1, devices: Sequence[jax.Device] | None = None,
                precision: str = "fp32") -> np.ndarray:
    """Network (plus residual) on one volume.

    Args:
      params: model parameters (NumPy, or JAX arrays on the device to use).
      config: architecture.
      volume: ``(X, Y, Z, C_in)`` float32 network input.
      tile: tile edge in output voxels; None picks whole-volume or tiles by memory.
      residual: override ``config.residual``.
      bucket: pad a whole volume up to a multiple of this many voxels per axis
        (results unchanged), so volumes of nearby sizes share one compilation.
      devices: where tiles run, round robin (default: the default device).
        A whole volume runs on the default device.
      precision: arithmetic of the convolutions, one of ``config.PRECISIONS``.

    Returns:
      ``(X, Y, Z)`` float32.
    """
    volume = np.asarray(volume, np.float32)
    residual = config.residual if residual is None else residual
    try:
        conv.check_precision(precision)
    except ValueError as e:
        raise SrrecnnError(str(e), "precision") from None
    if tile is None:
        tile = auto_tile(config, _round_up(volume.shape[:3], bucket))
    if tile is None:
        y = _run_padded(params, config, volume, bucket, precision)
    else:
        y = _run_tiles(params, config, volume, tile, devices, precision)
    return y + volume[..., 0] if residual else y


def _round_up(shape: Sequence[int], multiple: int) -> list[int]:
    return [math.ceil(s / multiple) * multiple for s in shape]


def _run_padded(params: model.Params, config: ModelConfig, volume: np.ndarray,
                bucket: int, precision: str = "fp32") -> np.ndarray:
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
        y = _forward(params, x[None], "SAME", mask, precision)
    else:
        r = config.receptive_radius
        x = np.zeros([f + 2 * r for f in full] + [channels], np.float32)
        x[tuple(slice(0, s + 2 * r) for s in shape)] = model.pad_input(volume, config)
        y = _forward(params, x[None], "VALID", None, precision)
    return np.asarray(y)[(0,) + inside + (0,)]


def _run_tiles(params: model.Params, config: ModelConfig, volume: np.ndarray,
               tile: int, devices: Sequence[jax.Device] | None = None,
               precision: str = "fp32") -> np.ndarray:
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
                                 precision), lo))
        if len(pending) > 2 * len(devices):
            collect(*pending.pop(0))
    for result, lo in pending:
        collect(result, lo)
    return out
