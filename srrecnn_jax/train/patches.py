"""Training patch sets in the original's HDF5 layout, streamed (NumPy and h5py only).

Layout (as ``generate_training.py``, so Caffe's HDF5Data layer reads ours and
we read theirs): datasets ``data`` (N, C, P, P, P) and ``label``
(N, 1, P, P, P), created in that order, float32, chunked (batch, C, P, P, P),
unlimited first axis, default fill value, no filter, no attributes; image
axes in (x, y, z) order. Patches are every P^3 block whose corner is a
multiple of the stride (sklearn's ``extract_patches`` order), scale after
scale, shuffled with ``np.random.seed(0); np.random.permutation(N)`` and cut
to the first ``samples``. Intensities are min-max rescaled to [0, 1] per image
(HR, the given LR image in free mode, the other modality in intermod mode).

Streaming: patch counts follow from the image sizes alone, so the
permutation of all N patches is drawn first; then each source is processed
in turn and its patches are written straight to their shuffled rows. Memory
holds one source's volumes and a bounded chunk of its patches.

With ``compat=True`` the datasets hold the original's values bit for bit
(given the same SciPy: the blur and spline zooms are ``scipy.ndimage``'s) and
have its dtype, shape, chunks, maxshape, fill value and filters. The file bytes
themselves also depend on the HDF5 library and on write order; h5py 2, which
the original used, even stamped each dataset with its creation time.

Departures from the original, each undone by ``compat=True``:
- min-max: the original's ``utils3d.imadjust3D`` computes
  ``temp = (newMax - newMin) / float(Max - Min)`` and
  ``(image - Min) * temp + newMin``: a float32 ``Max - Min``, its reciprocal in
  float64 rounded to float32 (NumPy 1 casting the Python float to the float32
  array's dtype), then a float32 product: one float32 step off the quotient
  for 10-30% of the voxels of real scans, and for some ranges the maximum
  lands a step below 1. The default mode keeps dividing, ``(x - min) /
  (max - min)`` correctly rounded in float32, so the maximum is exactly 1;
- the original's chunks are always ``batch`` rows, even for fewer patches
  (h5py allows that because the first axis is unlimited); the default mode
  keeps ``min(batch, N)`` rows, so a small set does not fill a chunk with
  padding;
- with several scales the original crops ``hr`` and the blurred image to
  multiples of each scale in turn, so the crops accumulate; we crop the
  original arrays for each scale. The original keeps ``n - fmod(n, s)``
  voxels, which for a factor that is not a binary fraction (1.1) can be a
  whole step less than our ``floor(n / s) * s``;
- "free" mode zoomed the LR image by ``hr_shape // lr_shape`` (Python 2
  integer division); we zoom by the true ratio so the grids match;
- ``samples``: the original cuts with ``[:samples]`` only when ``samples`` is
  truthy (0 keeps all, -k drops the last k); the default mode requires a
  positive count.

Where the original stops or mispairs, both modes give the natural result: it
joins the scales with ``np.asarray`` of the per-scale patch lists, which fails
unless every scale gives the same count; in intermod mode it cuts the other
modality without the modcrop, and in free mode it shaves and cuts the HR and
zoomed LR images each on its own grid, which works only while both grids hold
the same patches. We cut every channel on the label's cropped grid.

In both modes the ``list_file`` names each output by its absolute path (the
original wrote the ``-o`` text as typed, relative to where it ran; ``srrecnn
train`` resolves relative names against the list file's folder, and Caffe
reads absolute ones alike).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.ndimage

from srrecnn_jax.degradation import modcrop
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import check_output_file
from srrecnn_jax.images import image_size, read_volume
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.writing import atomic_output, write_text_atomic

Scale = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """How patches are cut (defaults of the original ``generate_training.py``)."""

    patch: int = 21
    stride: int = 10
    border: tuple[int, int, int] = (10, 10, 0)
    sigma: float | tuple[float, ...] = 1.0  # one per axis: degradation.blur_sigma
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


def rescale_unit(volume: np.ndarray, compat: bool = False) -> np.ndarray:
    """Min-max rescale to [0, 1] in float32.

    Default: ``(x - min) / (max - min)``, the correctly rounded float32 quotient.
    ``compat``: the original's ``utils3d.imadjust3D(image, [0, 1])`` bit for bit,
    each step in the dtype the original's NumPy 1 used, cast explicitly so NumPy's
    promotion rules do not matter: ``Max - Min`` of the float32 scalars (float32),
    ``temp = 1 / float(...)`` (float64), then ``(image - Min) * temp`` in float32
    with ``temp`` rounded to float32; the original's ``+ newMin`` adds 0, which
    changes nothing (``image - Min`` is never -0).
    """
    volume = np.asarray(volume, np.float32)
    if compat:
        low, high = np.float32(volume.min()), np.float32(volume.max())
        if not high > low:
            raise ValueError("constant image: min-max rescaling is undefined")
        temp = np.float32(1.0 / float(np.subtract(high, low, dtype=np.float32)))
        return np.multiply(np.subtract(volume, low, dtype=np.float32), temp, dtype=np.float32)
    low, high = float(volume.min()), float(volume.max())
    if high <= low:
        raise ValueError("constant image: min-max rescaling is undefined")
    return (volume - low) / np.float32(high - low)


def _compat_crop(n: int, s: float) -> int:
    """Voxels utils3d.modcrop3D keeps on an axis of n: ``int(n - math.fmod(n, s))``."""
    return int(n - math.fmod(n, s))


def _compat_modcrop(volume: np.ndarray, scale: Scale) -> np.ndarray:
    return volume[tuple(slice(0, _compat_crop(n, s)) for n, s in zip(volume.shape, scale))]


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
        cropped = tuple(_compat_crop(n, s) if config.compat else int(np.floor(n / s) * s)
                        for n, s in zip(current, scale))
        shapes.append(cropped)
        if config.compat:
            current = cropped
    return shapes


def pairs(source: Source, config: PatchConfig,
          read: Callable[[Path], np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(data (C, X, Y, Z), label (1, X, Y, Z))`` volumes of a source, shaved.

    ``read`` returns an (x, y, z) array for a path.
    """
    hr = rescale_unit(read(source.hr), config.compat)
    if source.mode == "free":
        lr = rescale_unit(read(source.other), config.compat)
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
    other = (rescale_unit(read(source.other), config.compat) if source.mode == "intermod"
             else None)
    if other is not None and other.shape != hr.shape:
        raise ValueError(f"{source.other}: shape {other.shape} differs from {source.hr}'s "
                         f"{hr.shape}; register and resample it onto the HR grid first")
    blur = scipy.ndimage.gaussian_filter(hr, config.sigma)
    for scale in config.scales:
        if config.compat:  # the original reassigns both arrays: crops accumulate
            blur, hr = _compat_modcrop(blur, scale), _compat_modcrop(hr, scale)
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
                    chunk_patches: int = 1024, replace: bool = True) -> int:
    """Write the shuffled patches of ``sources`` to one HDF5 file; return the count.

    Args:
      path: the ``.h5`` file (written under a temporary name, then renamed; without
        ``replace`` never over an existing file, see ``writing.atomic_output``).
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
    if config.compat:  # the original: `if args.samples: X = X[:args.samples]`
        kept = len(range(total)[:config.samples]) if config.samples else total
    elif config.samples is None:
        kept = total
    elif config.samples < 1:
        raise ValueError(f"samples must be positive, got {config.samples}")
    else:
        kept = min(config.samples, total)
    np.random.seed(0)
    permutation = np.random.permutation(total)  # row i holds patch permutation[i]
    row_of = np.empty(total, np.int64)
    row_of[permutation] = np.arange(total)
    channels = 2 if any(s.mode == "intermod" for s in sources) else 1
    p = config.patch
    with atomic_output(path, replace=replace) as tmp, h5py.File(tmp, "w") as f:
        # store2hdf53D: chunks=(chunksz,) + dims[1:] whatever the row count (allowed
        # with an unlimited first axis); the default mode never exceeds the rows.
        batch = config.batch if config.compat else min(config.batch, kept)
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
    return kept


def _cut(volume: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
    """``(len(corners), C, P, P, P)`` blocks of a ``(C, X, Y, Z)`` volume."""
    return np.stack([volume[:, x:x + patch, y:y + patch, z:z + patch] for x, y, z in corners])


def make_patch_sets(hr: Sequence[Path], outputs: Sequence[Path], config: PatchConfig,
                    mode: str = "simulated", others: Sequence[Path] = (),
                    list_file: Path | None = None, force: bool = False,
                    progress: Callable[[int], None] | None = None,
                    report: Callable[[str], None] | None = None) -> list[int]:
    """Patch sets from image files: one HDF5 file for all ``hr`` images, or one per image.

    Args:
      hr: HR images.
      outputs: one ``.h5`` for all, or one per HR image (as the original).
      config: how patches are cut.
      mode: ``simulated``, ``free`` or ``intermod`` (see ``Source``).
      others: per HR image, its LR image (free) or registered other modality (intermod).
      list_file: also write this text file listing the outputs (Caffe's HDF5Data source).
      force: replace existing outputs.
      progress: called with 1 after each image; ``report`` with a line per file written.

    Every output is checked and every image's size read before any patch is cut.
    Returns the patch count of each output.
    """
    if mode not in ("simulated", "free", "intermod"):
        raise SrrecnnError(f"unknown mode {mode!r}", "mode")
    if mode == "simulated" and others:
        raise SrrecnnError("only for the free and intermod modes", "others")
    if mode != "simulated" and len(others) != len(hr):
        raise SrrecnnError(f"{mode} mode needs one per HR image ({len(hr)} HR images, "
                           f"{len(others)} given)", "others")
    if len(outputs) not in (1, len(hr)):
        raise SrrecnnError(f"give one file, or one per HR image ({len(hr)})", "outputs")
    for output in list(outputs) + ([list_file] if list_file else []):
        check_output_file(output, force, list(hr) + list(others), image=False)
    if config.sigma < 0:
        raise SrrecnnError(f"must be >= 0, got {config.sigma}", "sigma")
    sources = [Source(path, others[i] if others else None, mode) for i, path in enumerate(hr)]
    shapes = [tuple(image_size(p) for p in (s.hr, s.other) if p) for s in sources]
    groups = ([(outputs[0], sources, shapes)] if len(outputs) == 1 else
              [(o, [s], [sh]) for o, s, sh in zip(outputs, sources, shapes)])
    counts = []
    for output, group, group_shapes in groups:
        try:
            count = write_patch_set(output, group, group_shapes, config,
                                    lambda path: read_volume(path, "image"), progress,
                                    replace=force)
        except ValueError as e:
            raise SrrecnnError(f"{output}: {e}") from None
        counts.append(count)
        if report:
            report(f"{output}: {count} patches")
    if list_file:
        write_text_atomic(list_file, "".join(f"{o.resolve()}\n" for o in outputs),
                             replace=force)
    return counts
