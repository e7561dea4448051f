"""Training patch sets in the original's HDF5 layout, streamed (NumPy and h5py only).

Layout (as ``generate_training.py``, so Caffe's HDF5Data layer reads ours and
we read theirs): datasets ``data`` (N, C, P, P, P) and ``label``
(N, 1, P, P, P), float32, chunked (batch, C, P, P, P), unlimited first axis;
image axes in (x, y, z) order. Patches are every P^3 block whose corner is a
multiple of the stride (sklearn's ``extract_patches`` order), shuffled with
``np.random.seed(0); np.random.permutation(N)`` and cut to ``samples``.

Streaming: patch counts follow from the image sizes alone, so the
permutation of all N patches is drawn first; then each source is processed
in turn and its patches are written straight to their shuffled rows. Memory
holds one source's volumes and a bounded chunk of its patches.

Departures from the original, each undone by ``compat=True``:
- with several scales the original crops ``hr`` and the blurred image to
  multiples of each scale in turn, so the crops accumulate; we crop the
  original arrays for each scale;
- "free" mode zoomed the LR image by ``hr_shape // lr_shape`` (Python 2
  integer division); we zoom by the true ratio so the grids match.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.ndimage

from srrecnn_jax.degradation import modcrop
from srrecnn_jax.interpolation import zoom

Scale = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """How patches are cut (defaults of the original ``generate_training.py``)."""

    patch: int = 21
    stride: int = 10
    border: tuple[int, int, int] = (10, 10, 0)
    sigma: float = 1.0
    order: int = 3
    scales: tuple[Scale, ...] = ((2.0, 2.0, 2.0),)
    batch: int = 64
    samples: int | None = None
    compat: bool = False


@dataclasses.dataclass(frozen=True)
class Source:
    """One training example: an HR volume and, per mode, a second volume.

    ``mode``: ``simulated`` (LR made by the observation model), ``free``
    (``other`` is the user's LR image) or ``intermod`` (``other`` is a
    registered HR image of another modality, a second input channel).
    """

    hr: Path
    other: Path | None = None
    mode: str = "simulated"


def rescale_unit(volume: np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 1] in float32, as the original."""
    volume = np.asarray(volume, np.float32)
    low, high = float(volume.min()), float(volume.max())
    if high <= low:
        raise ValueError("constant image: min-max rescaling is undefined")
    return (volume - low) / np.float32(high - low)


def shave(volume: np.ndarray, border: Sequence[int]) -> np.ndarray:
    """Drop ``border[i]`` voxels at both ends of spatial axis i (the last three axes)."""
    index = tuple(slice(b, n - b) for b, n in zip(border, volume.shape[-3:]))
    return volume[(Ellipsis,) + index]


def patch_corners(shape: Sequence[int], patch: int, stride: int) -> np.ndarray:
    """``(N, 3)`` corners of every whole patch on the stride grid, x slowest, z fastest."""
    axes = [range(0, n - patch + 1, stride) for n in shape]
    return np.array(list(itertools.product(*axes)), dtype=np.int64).reshape(-1, 3)


def count_patches(shape: Sequence[int], patch: int, stride: int) -> int:
    return int(np.prod([max(0, (n - patch) // stride + 1) for n in shape]))


def _crops(shape: Sequence[int], config: PatchConfig) -> list[tuple[int, ...]]:
    """Spatial shape after modcrop, per scale (accumulating in compat mode)."""
    shapes, current = [], tuple(shape)
    for scale in config.scales:
        cropped = tuple(int(np.floor(n / s) * s) for n, s in zip(current, scale))
        shapes.append(cropped)
        if config.compat:
            current = cropped
    return shapes


def pairs(source: Source, config: PatchConfig,
          read: Callable[[Path], np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(data (C, X, Y, Z), label (1, X, Y, Z))`` volumes of a source, shaved.

    ``read`` returns an (x, y, z) array for a path.
    """
    hr = rescale_unit(read(source.hr))
    if source.mode == "free":
        lr = rescale_unit(read(source.other))
        if lr.shape != hr.shape:
            if config.compat:
                factors = [a // b for a, b in zip(hr.shape, lr.shape)]
            else:
                factors = [a / b for a, b in zip(hr.shape, lr.shape)]
            lr = zoom(lr, factors, config.order)
            common = tuple(slice(0, min(a, b)) for a, b in zip(hr.shape, lr.shape))
            hr, lr = hr[common], lr[common]
        yield shave(lr[None], config.border), shave(hr[None], config.border)
        return
    other = rescale_unit(read(source.other)) if source.mode == "intermod" else None
    if other is not None and other.shape != hr.shape:
        raise ValueError(f"{source.other}: shape {other.shape} differs from {source.hr}'s "
                         f"{hr.shape}; register and resample it onto the HR grid first")
    blur = scipy.ndimage.gaussian_filter(hr, config.sigma)
    for scale in config.scales:
        if config.compat:  # the original reassigns both arrays: crops accumulate
            blur, hr = modcrop(blur, scale), modcrop(hr, scale)
            b, h = blur, hr
        else:
            b, h = modcrop(blur, scale), modcrop(hr, scale)
        lr = zoom(b, [1 / s for s in scale], config.order)
        interp = zoom(lr, [a / c for a, c in zip(h.shape, lr.shape)], config.order)
        channels = [interp]
        if other is not None:
            channels.append(other[tuple(slice(0, n) for n in h.shape)])
        yield shave(np.stack(channels), config.border), shave(h[None], config.border)


def _free_shape(hr: Sequence[int], lr: Sequence[int], compat: bool) -> tuple[int, ...]:
    """Common shape of HR and the zoomed LR image in free mode."""
    if tuple(hr) == tuple(lr):
        return tuple(hr)
    factors = [a // b if compat else a / b for a, b in zip(hr, lr)]
    return tuple(min(a, int(round(b * f))) for a, b, f in zip(hr, lr, factors))


def source_counts(sources: Sequence[Source], shapes: Sequence[tuple[Sequence[int], ...]],
                  config: PatchConfig) -> list[int]:
    """Patches each source will give, from the image sizes alone.

    ``shapes[i]`` is ``(hr_shape,)`` or ``(hr_shape, other_shape)``.
    """
    counts = []
    for source, shape in zip(sources, shapes):
        if source.mode == "free":
            crops = [_free_shape(shape[0], shape[1], config.compat)]
        else:
            crops = _crops(shape[0], config)
        counts.append(sum(count_patches([n - 2 * b for n, b in zip(c, config.border)],
                                        config.patch, config.stride) for c in crops))
    return counts


def write_patch_set(path: Path, sources: Sequence[Source],
                    shapes: Sequence[tuple[Sequence[int], ...]],
                    config: PatchConfig, read: Callable[[Path], np.ndarray],
                    progress: Callable[[int], None] | None = None,
                    chunk_patches: int = 1024) -> int:
    """Write the shuffled patches of ``sources`` to one HDF5 file; return the count.

    Args:
      path: the ``.h5`` file (written under a temporary name, then renamed).
      sources: the training examples, in order.
      shapes: per source, the (x, y, z) shapes of its HR image (and of its other
        image), to count patches up front.
      config: patch size, stride, border, scales, seed-0 shuffle, ``samples``.
      read: path -> (x, y, z) array.
      progress: called with 1 after each source.
      chunk_patches: patches held in memory at once.
    """
    counts = source_counts(sources, shapes, config)
    total = sum(counts)
    if total == 0:
        raise ValueError("no whole patch fits: images too small for the patch, border "
                         "and scales")
    np.random.seed(0)
    permutation = np.random.permutation(total)  # row i holds patch permutation[i]
    row_of = np.empty(total, np.int64)
    row_of[permutation] = np.arange(total)
    kept = total if config.samples is None else min(config.samples, total)
    channels = 2 if any(s.mode == "intermod" for s in sources) else 1
    p = config.patch
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with h5py.File(tmp, "w") as f:
            batch = min(config.batch, kept)
            data = f.create_dataset("data", (kept, channels, p, p, p), np.float32,
                                    chunks=(batch, channels, p, p, p),
                                    maxshape=(None, channels, p, p, p))
            label = f.create_dataset("label", (kept, 1, p, p, p), np.float32,
                                     chunks=(batch, 1, p, p, p), maxshape=(None, 1, p, p, p))
            first = 0
            for source in sources:
                for data_volume, label_volume in pairs(source, config, read):
                    corners = patch_corners(label_volume.shape[1:], p, config.stride)
                    rows = row_of[first:first + len(corners)]
                    first += len(corners)
                    for start in range(0, len(corners), chunk_patches):
                        block_rows = rows[start:start + chunk_patches]
                        keep = np.flatnonzero(block_rows < kept)
                        if keep.size == 0:
                            continue
                        order = keep[np.argsort(block_rows[keep])]
                        picked = corners[start:start + chunk_patches][order]
                        data[np.sort(block_rows[keep])] = _cut(data_volume, picked, p)
                        label[np.sort(block_rows[keep])] = _cut(label_volume, picked, p)
                if progress:
                    progress(1)
            if first != total:
                raise RuntimeError(f"counted {total} patches but cut {first}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return kept


def _cut(volume: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
    """``(len(corners), C, P, P, P)`` blocks of a ``(C, X, Y, Z)`` volume."""
    return np.stack([volume[:, x:x + patch, y:y + patch, z:z + patch] for x, y, z in corners])
