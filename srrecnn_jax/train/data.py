"""Training batches from HDF5 patch sets, as a pure function of the step.

Like Caffe's HDF5Data layer (no shuffle: the sets are shuffled when made),
batches walk through the concatenated files in order and wrap around, so the
batch of step ``t`` is rows ``[t B, (t + 1) B)`` modulo N. Being a function
of the step, the input pipeline needs no state of its own to resume exactly,
and each of P processes reads only its own rows of every global batch.
A background thread reads ahead into a bounded queue. Every row read is
checked: a NaN or infinite value stops training with an error naming the file
and the row (checkpoints saved before it are kept).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from srrecnn_jax.degradation import blur_sigma
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import is_list_file, read_list_file
from srrecnn_jax.scales import Scale, parse_scale
from srrecnn_jax.train.augment import degraded_patch, flip_permute
from srrecnn_jax.train.config import AugmentConfig
from srrecnn_jax.train.patches import PatchConfig, Source, pairs, rescale_unit


def expand_sources(paths: Sequence[Path]) -> list[Path]:
    """HDF5 files, and text files listing them one per line (Caffe's ``train.txt``)."""
    files: list[Path] = []
    for path in paths:
        if not path.is_file():
            raise SrrecnnError(f"{path}: no such training data file")
        files += read_list_file(path) if is_list_file(path) else [path]
    return files


class PatchSet:
    """Read access to the rows of one or more HDF5 patch files, in order."""

    #: The scales the patches were cut at, and the HR voxel size: the HDF5 layout does
    #: not record them.
    scales: tuple[float, ...] | None = None
    spacing: float | None = None

    def __init__(self, paths: Sequence[Path]):
        self.paths = expand_sources(paths)
        self._files, self.sizes = [], []
        channels = None
        for path in self.paths:
            try:
                f = h5py.File(path, "r")
                data, label = f["data"], f["label"]
            except FileNotFoundError:
                raise SrrecnnError(f"{path}: no such HDF5 file") from None
            except (OSError, KeyError) as e:
                raise SrrecnnError(f"{path}: not a patch set with data and label ({e})") \
                    from None
            if (data.ndim != 5 or label.ndim != 5 or label.shape[0] != data.shape[0]
                    or label.shape[1] != 1 or label.shape[2:] != data.shape[2:]):
                raise SrrecnnError(f"{path}: data {data.shape} / label {label.shape} are not "
                                   "(N, C, P, P, P) / (N, 1, P, P, P) with the same N and P")
            if channels not in (None, data.shape[1:]):
                raise SrrecnnError(f"{path}: patches {data.shape[1:]} differ from the "
                                   f"other files' {channels}")
            channels = data.shape[1:]
            self._files.append(f)
            self.sizes.append(data.shape[0])
        if not self.paths or sum(self.sizes) == 0:
            raise SrrecnnError("training data: no patches")
        self.channels = channels[0]
        self.patch = channels[1]
        self._starts = np.cumsum([0] + self.sizes)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def rows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` rows from global row ``first`` (wrapping), channels-last."""
        index = (first + np.arange(count)) % len(self)
        data, label = [], []
        # contiguous runs within one file are read in one slice
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        for run in np.split(index, breaks):
            while run.size:
                k = int(np.searchsorted(self._starts, run[0], side="right") - 1)
                local = run[run < self._starts[k + 1]] - self._starts[k]
                f = self._files[k]
                for name, into in (("data", data), ("label", label)):
                    into.append(f[name][local[0]:local[-1] + 1])
                    _check_finite_rows(self.paths[k], name, int(local[0]), into[-1])
                run = run[local.size:]
        data_cl = np.concatenate(data).transpose(0, 2, 3, 4, 1)  # (B, P, P, P, C)
        label_cl = np.concatenate(label).transpose(0, 2, 3, 4, 1)
        return np.ascontiguousarray(data_cl), np.ascontiguousarray(label_cl)

    def batch(self, step: int, batch: int, process: int = 0,
              processes: int = 1) -> dict[str, np.ndarray]:
        """This process's share of global batch ``step``."""
        share = batch // processes
        data, label = self.rows(step * batch + process * share, share)
        return {"data": data, "label": label}

    def close(self) -> None:
        for f in self._files:
            f.close()


def prefetch(patches: PatchSet, first_step: int, last_step: int, batch: int, process: int,
             processes: int, depth: int = 4,
             stats: dict | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches for steps ``first_step .. last_step - 1``, read ahead by a thread.

    ``stats["wait_seconds"]`` accumulates the time the consumer waited.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for step in range(first_step, last_step):
                if stop.is_set():
                    return
                ready.put(patches.batch(step, batch, process, processes))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            ready.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        for _ in range(first_step, last_step):
            tick = time.perf_counter()
            item = ready.get()
            if stats is not None:
                stats["wait_seconds"] = stats.get("wait_seconds", 0.0) + time.perf_counter() - tick
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _check_finite_rows(path: Path, name: str, first: int, rows: np.ndarray) -> None:
    """Refuse rows ``first, first + 1, ...`` of dataset ``name`` if one holds a NaN or
    infinity, naming the file and the first such row."""
    finite = np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
    if not finite.all():
        raise SrrecnnError(f"{path}: {name}[{first + int(np.argmin(finite))}] holds non-finite "
                           "values (NaN or infinity)")


def _shown(scale: float | Sequence[float]) -> str:
    """A scale as a setting writes it: ``2.5`` or ``[1, 1, 4]``."""
    if isinstance(scale, int | float):
        return f"{scale:g}"
    return f"[{', '.join(f'{s:g}' for s in parse_scale(scale))}]"


def check_degradable(shape: Sequence[int], scale: float | Sequence[float], name: str,
                     setting: str) -> None:
    """Refuse a volume of ``shape`` that degrading by ``scale`` (a number, or (x, y, z)
    factors; the observation model) leaves with fewer than 2 low-resolution voxels along
    an axis; the error names the volume and the training ``setting`` that holds the scale."""
    axes = parse_scale(scale)
    low = tuple(int(n // s) for n, s in zip(shape, axes))
    if min(low) < 2:
        raise SrrecnnError(f"{name} of {tuple(shape)} voxels degraded by {setting} "
                           f"{_shown(scale)} "
                           f"leaves {low} low-resolution voxels; at least 2 per axis are "
                           "needed")


class RandomPatches:
    """Patches cut on the fly from HR volumes: random volume, scale and position.

    Each HR volume is min-max rescaled to [0, 1] and degraded once per scale
    (blur, modcrop, downsample, spline back up), as ``make-patches`` does; the
    pairs stay in memory. A scale is a number s, (s, s, s), or (x, y, z) factors;
    ``blur`` is the original's Gaussian of ``sigma`` along every axis, or
    ``"slice_profile"`` (thick slices: ``degradation.slice_profile``). Sample ``i``
    of global batch ``t`` is drawn from a generator seeded with ``(seed, t, i)``, so
    batches are a function of the step (exact resume) and P processes draw disjoint
    shares of the same global batch.

    ``augment`` (``train/augment.py``; off by default, batches then as without it):
    flips and axis permutations act on the cut pair; gamma, bias field, both noises
    and blur jitter act before or inside the degradation, so with any of them on each
    patch is degraded on its own from an HR block around it (``augment.degraded_patch``)
    and no whole-volume pairs are kept. Either way a sample draws its volume, scale
    and position first, so both paths cut the same places.

    ``volume_scales`` gives volumes scales of their own (None: ``scales``), e.g. the
    coarsest thick-slice spacings only from templates resampled to coarse voxels. A
    sample draws a (volume, scale) entry uniformly, so a volume with fewer scales is
    drawn less often.

    ``names`` (default "training volume i") name the volumes in errors.

    ``spacing`` is not used for cutting: it is recorded in the trained model folder
    (``trained_spacing``) for the warning about inputs far from it.
    """

    def __init__(self, volumes: Sequence[np.ndarray], scales: Sequence[float | Sequence[float]],
                 patch: int, sigma: float = 1.0, order: int = 3, seed: int = 0,
                 others: Sequence[np.ndarray] | None = None, blur: str = "gaussian",
                 augment: AugmentConfig | None = None, spacing: float | None = None,
                 volume_scales: Sequence[Sequence[float | Sequence[float]] | None] | None = None,
                 names: Sequence[str] | None = None):
        self.augment = augment or AugmentConfig()
        names = names or [f"training volume {i}" for i in range(len(volumes))]
        self.spacing = spacing  # mm, the HR volumes' voxel size if known and isotropic
        volume_scales = volume_scales or [None] * len(volumes)
        per_volume = [list(scales) if own is None else list(own) for own in volume_scales]
        if len(per_volume) != len(volumes):
            raise ValueError(f"volume_scales has {len(per_volume)} entries for "
                             f"{len(volumes)} volumes")
        axes: list[tuple[float, float, float]] = []  # every scale once, in order of use
        for own in per_volume:
            axes += [a for a in map(parse_scale, own) if a not in axes]
        if self.augment.permute and any(len(set(a)) > 1 for a in axes):
            raise ValueError("augment.permute needs isotropic patch_scales, got "
                             f"{[list(a) for a in axes]}")
        self.sigmas = [tuple(float(g) for g in np.broadcast_to(blur_sigma(a, blur, sigma), 3))
                       for a in axes]  # (x, y, z) per scale
        # One entry per (volume, scale) drawn from, volume-major: (volume, index in axes),
        # and the label grid it is cut from.
        self.entries, self.shapes = [], []
        for i, (volume, own) in enumerate(zip(volumes, per_volume)):
            setting = "patch_scales" if volume_scales[i] is None else "patch_scales_by_file"
            for scale in own:
                axis_scale = parse_scale(scale)
                check_degradable(volume.shape, scale, names[i], setting)
                shape = tuple(int(np.floor(n / s) * s) for n, s in zip(volume.shape, axis_scale))
                if min(shape) < patch:
                    raise SrrecnnError(f"{names[i]}: {shape} at scale {_shown(scale)} "
                                       f"is smaller than the {patch}^3 patch")
                self.entries.append((i, axes.index(axis_scale)))
                self.shapes.append(shape)
        self.pairs, self.units, self.others = [], [], []
        if self.augment.per_patch:
            self.units = [rescale_unit(v) for v in volumes]
            self.others = [rescale_unit(v) for v in others] if others else []
        else:
            for i, volume in enumerate(volumes):
                own = [j for v, j in self.entries if v == i]
                self.pairs += _whole_pairs(volume, others[i] if others else None,
                                           [axes[j] for j in own], [self.sigmas[j] for j in own],
                                           patch, order)
        self.patch, self.seed, self.order = patch, seed, order
        self.scales = tuple(tuple(a) if len(set(a)) > 1 else a[0] for a in axes)
        self._axes = axes
        self.channels = 1 + bool(others)

    def batch(self, step: int, batch: int, process: int = 0,
              processes: int = 1) -> dict[str, np.ndarray]:
        share = batch // processes
        p, augment = self.patch, self.augment
        data, label = [], []
        for i in range(process * share, (process + 1) * share):
            rng = np.random.default_rng([self.seed, step, i])
            k = int(rng.integers(len(self.shapes)))
            x, y, z = (int(rng.integers(n - p + 1)) for n in self.shapes[k])
            if augment.per_patch:
                v, j = self.entries[k]
                d, t = degraded_patch(self.units[v], (x, y, z), p, self._axes[j],
                                      self.sigmas[j], self.order, augment, rng,
                                      self.others[v] if self.others else None)
            else:
                volume, truth = self.pairs[k]
                d = volume[:, x:x + p, y:y + p, z:z + p]
                t = truth[:, x:x + p, y:y + p, z:z + p]
            if augment.flips or augment.permute:
                d, t = flip_permute(d, t, rng, augment.flips, augment.permute)
            data.append(d)
            label.append(t)
        return {"data": np.ascontiguousarray(np.stack(data).transpose(0, 2, 3, 4, 1)),
                "label": np.ascontiguousarray(np.stack(label).transpose(0, 2, 3, 4, 1))}

    def close(self) -> None:
        pass


def _whole_pairs(volume: np.ndarray, other: np.ndarray | None, scales: Sequence[Scale],
                 sigmas: Sequence, patch: int, order: int) -> list:
    """``(data (C, X, Y, Z), label (1, X, Y, Z))`` of one volume per scale, in order: the
    whole volume degraded once per run of consecutive scales of the same blur."""
    arrays = {"hr": volume, "other": other}
    source = Source(Path("hr"), Path("other") if other is not None else None,
                    "intermod" if other is not None else "simulated")
    found = []
    for sigma, run in itertools.groupby(zip(sigmas, scales), key=lambda pair: pair[0]):
        config = PatchConfig(patch=patch, border=(0, 0, 0), sigma=sigma, order=order,
                             scales=tuple(scale for _, scale in run))
        found += pairs(source, config, lambda p, a=arrays: a[p.name])
    return found
