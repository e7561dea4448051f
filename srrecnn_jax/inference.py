"""Super-resolution inference: the original pipeline, whole-volume or in exact tiles.

Pipeline (as the original ``demo_*SRReCNN3D.py``): normalise by the maximum,
cubic-spline zoom, network, residual, de-normalise, clamp at the input
minimum. Arrays are (x, y, z); the network sees ``(1, X, Y, Z, C)``.

Tiles are exact: a tile carries a halo of the receptive radius R, and for
same-padded models every hidden activation is multiplied by a mask of the
volume, so a tile at the border sees the same per-layer zero padding as the
whole volume. All tiles of a run share one shape, hence one compilation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import SimpleITK as sitk

from srrecnn_jax import conv, io, model
from srrecnn_jax.checkpoint import LoadedModel, load_model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.interpolation import parse_scale, zoom, zoom_device, zoomed_shape

_forward = jax.jit(model.forward, static_argnames=("padding", "precision", "impl"))

# Float32 activations XLA keeps alive at once in a tile (inputs, outputs,
# workspace), counted per voxel and channel of the widest layer: about 2 with
# XLA's convolution (GPUs), 4 assumed; on CPU, with the Winograd and row-product
# formulations, its buffer assignment measured 10.7-11.3 (10L-64, 96 x 112 x 96;
# a whole 196 x 232 x 188 volume peaked at 22 GiB).
_LIVE_ACTIVATIONS = {"cpu": 12}
_LIVE_ACTIVATIONS_DEFAULT = 4
_MIN_TILE = 16


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
    return max(side - 2 * r, _MIN_TILE)


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
      precision: arithmetic of the convolutions, one of ``model.PRECISIONS``.

    Returns:
      ``(X, Y, Z)`` float32.
    """
    volume = np.asarray(volume, np.float32)
    residual = config.residual if residual is None else residual
    try:
        conv.check_precision(precision)
    except ValueError as e:
        raise SrrecnnError(f"--precision: {e}") from None
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
        if full != list(shape):
            mask = np.zeros([1] + full + [1], np.float32)
            mask[(0,) + inside] = 1.0
        y = _forward(params, x[None], "SAME", mask, precision)
    else:
        r = config.receptive_radius
        x = np.zeros([f + 2 * r for f in full] + [channels], np.float32)
        x[tuple(slice(0, s + 2 * r) for s in shape)] = np.pad(
            volume, [(r, r)] * 3 + [(0, 0)], mode="edge")
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
        raise SrrecnnError(f"--tile: must be a positive number of voxels, got {tile}")
    shape, r = volume.shape[:3], config.receptive_radius
    sizes = [min(tile, s) for s in shape]
    counts = [math.ceil(s / t) for s, t in zip(shape, sizes)]
    grid = [n * t + 2 * r for n, t in zip(counts, sizes)]
    padded = np.zeros(grid + [volume.shape[3]], np.float32)  # (X', Y', Z', C)
    mask = None
    if config.padding == "same":
        inside = tuple(slice(r, r + s) for s in shape)
        padded[inside] = volume
        mask = np.zeros(grid + [1], np.float32)
        mask[inside] = 1.0
    else:
        padded[tuple(slice(0, s + 2 * r) for s in shape)] = np.pad(
            volume, [(r, r)] * 3 + [(0, 0)], mode="edge")
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


@dataclasses.dataclass
class Prepared:
    """A volume ready for the network, and what it takes to finish it.

    Attributes:
      volume: ``(X, Y, Z, C)`` float32 network input: ``[zoom(lr / top), ref / ref.max()]``.
      low, top: the input's minimum and maximum (de-normalisation and clamp).
      geometry: spacing, origin and direction of the output image, or None
        for arrays.
    """

    volume: np.ndarray
    low: float
    top: float
    geometry: tuple | None = None


#: Where the cubic-spline zoom runs: ``device`` (three per-axis matrix products
#: in JAX, on the GPU when there is one; equal to scipy to float32 rounding,
#: and about 20x faster than scipy even on CPU) or ``scipy`` (the original's
#: ``scipy.ndimage.zoom``, on the host).
INTERPOLATIONS = ("device", "scipy")


def prepare_array(config: ModelConfig, lr: np.ndarray, scale: float | str | Sequence[float],
                  reference: np.ndarray | None = None, order: int = 3,
                  interpolation: str = "device") -> Prepared:
    """Normalise by the maximum and zoom; stack the normalised reference as channel 1.

    ``interpolation``: one of ``INTERPOLATIONS``.
    """
    lr = np.asarray(lr, np.float32)
    if lr.ndim != 3:
        raise SrrecnnError(f"input: array is {lr.ndim}-D, expected 3-D (x, y, z)")
    _check_channels(config, reference is not None)
    scale = _scale(scale)
    if not 0 <= order <= 5:
        raise SrrecnnError(f"--order: spline order must be 0 to 5, got {order}")
    if interpolation not in INTERPOLATIONS:
        raise SrrecnnError(f"--interpolation: must be one of {', '.join(INTERPOLATIONS)}, "
                           f"not {interpolation!r}")
    io.check_values(lr, "input")
    low, top = float(lr.min()), float(lr.max())
    if interpolation == "device":
        interp = np.asarray(zoom_device(lr / np.float32(top), scale, order))
    else:
        interp = zoom(lr / np.float32(top), scale, order)
    channels = [interp]
    if reference is not None:
        reference = np.asarray(reference, np.float32)
        if reference.shape != interp.shape:
            raise SrrecnnError(f"reference: shape {reference.shape} is not the zoomed input's "
                               f"{interp.shape}")
        io.check_values(reference, "reference")
        channels.append(reference / np.float32(reference.max()))
    return Prepared(np.stack(channels, axis=-1), low, top)


def finish_array(prepared: Prepared, y: np.ndarray) -> np.ndarray:
    """De-normalise the network output and clamp it at the input minimum."""
    return np.maximum(y * np.float32(prepared.top), np.float32(prepared.low))


def super_resolve_array(params: model.Params, config: ModelConfig, lr: np.ndarray,
                        scale: float | str | Sequence[float],
                        reference: np.ndarray | None = None, *,
                        order: int = 3, tile: int | None = None,
                        residual: bool | None = None, precision: str = "fp32",
                        interpolation: str = "device") -> np.ndarray:
    """The original pipeline on arrays.

    Args:
      params, config: the model.
      lr: ``(x, y, z)`` low-resolution volume.
      scale: one factor, or per-axis factors (x, y, z).
      reference: ``(x', y', z')`` second-modality volume on the zoomed grid
        (required by, and only allowed for, 2-channel models).
      order: spline order of the zoom (0-5).
      tile: tile edge (see ``run_network``).
      residual: override ``config.residual``.
      precision: arithmetic of the convolutions (see ``run_network``).
      interpolation: where the zoom runs, one of ``INTERPOLATIONS``.

    Returns:
      ``(round(x*s), ...)`` float32: ``max(mx * (net(i) + i), mn)`` with
      ``i = zoom(lr / mx)``, ``mn, mx`` the input's minimum and maximum.
    """
    prepared = prepare_array(config, lr, scale, reference, order, interpolation)
    return finish_array(prepared, run_network(params, config, prepared.volume, tile, residual,
                                              precision=precision))


def _check_channels(config: ModelConfig, has_reference: bool) -> None:
    if config.in_channels == 2 and not has_reference:
        raise SrrecnnError("--reference: this model is multimodal (2 input channels: the "
                           "interpolated image and a reference); give a reference image")
    if config.in_channels == 1 and has_reference:
        raise SrrecnnError("--reference: this model is monomodal (1 input channel); "
                           "it takes no reference image")
    if config.in_channels > 2:
        raise SrrecnnError(f"model takes {config.in_channels} input channels; only 1 or 2 "
                           "are supported")


def _scale(scale: float | str | Sequence[float]) -> tuple[float, float, float]:
    try:
        return parse_scale(scale)
    except ValueError as e:
        raise SrrecnnError(f"--scale: {e}") from None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class SuperResolver:
    """A loaded model that super-resolves SimpleITK images.

    >>> sr = SuperResolver.load("SRReCNN3D_10Layers_IsoScalex2.caffemodel")
    >>> out = sr.run(sitk.ReadImage("lr.nii.gz"), scale=2)
    """

    def __init__(self, loaded: LoadedModel):
        self.model = loaded

    @classmethod
    def load(cls, path: str | Path, prototxt: str | Path | None = None) -> SuperResolver:
        """From a model folder or a ``.caffemodel`` file (converted on the fly)."""
        return cls(load_model(path, prototxt))

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def prepare(self, image: sitk.Image, scale: float | str | Sequence[float],
                reference: sitk.Image | None = None, *, order: int = 3,
                header: str = "consistent", interpolation: str = "device",
                input_name: str = "input",
                reference_name: str = "reference",
                log: Callable[[str], None] = _stderr) -> Prepared:
        """Check, normalise and zoom ``image``; put ``reference`` on the output grid."""
        io.check_image(image, input_name)
        _check_channels(self.config, reference is not None)
        factors = _scale(scale)
        lr = io.to_array(image)
        io.check_values(lr, input_name)
        out_size = zoomed_shape(lr.shape, factors)
        if min(out_size) < 2:
            raise SrrecnnError(f"--scale: {factors} gives an output of {out_size} voxels")
        geometry = io.zoomed_geometry(image, out_size, factors, header)
        ref = None
        if reference is not None:
            io.check_image(reference, reference_name)
            if not io.same_grid(reference, out_size, *geometry):
                reference, covered = io.resample_onto(reference, out_size, *geometry,
                                                      name=reference_name)
                log(f"{reference_name}: not on the super-resolved grid; resampled onto it in "
                    f"physical space (linear), covering {100 * covered:.1f}% of it")
            ref = io.to_array(reference)
            io.check_values(ref, reference_name)
        prepared = prepare_array(self.config, lr, factors, ref, order, interpolation)
        prepared.geometry = geometry
        return prepared

    def finish(self, prepared: Prepared, y: np.ndarray) -> sitk.Image:
        """The network output as a float32 image on the output grid."""
        return io.to_image(finish_array(prepared, y), *prepared.geometry)

    def run(self, image: sitk.Image, scale: float | str | Sequence[float],
            reference: sitk.Image | None = None, *, order: int = 3, tile: int | None = None,
            residual: bool | None = None, header: str = "consistent", precision: str = "fp32",
            interpolation: str = "device",
            input_name: str = "input", reference_name: str = "reference",
            log: Callable[[str], None] = _stderr) -> sitk.Image:
        """Super-resolve ``image`` by ``scale`` (one factor or x, y, z factors).

        ``header="consistent"`` keeps the physical position of the first and
        last voxel centres (what the zoom computes); ``"original"`` writes the
        original release's ``spacing / scale``. A reference that is not on the
        output grid is resampled onto it in physical space (linear), with a
        note to ``log``. ``precision``: see ``run_network``; ``interpolation``: see
        ``prepare_array``. Returns a float32 image.
        """
        prepared = self.prepare(image, scale, reference, order=order, header=header,
                                interpolation=interpolation, input_name=input_name,
                                reference_name=reference_name, log=log)
        y = run_network(self.model.params, self.config, prepared.volume, tile, residual,
                        devices=jax.local_devices(), precision=precision)
        return self.finish(prepared, y)
