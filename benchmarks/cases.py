"""The case lists: GPU (full), CPU (full, smaller sizes) and smoke (tiny, for the tests)."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence

from srrecnn_jax.config import PRECISIONS

SUITES = ("inference", "train", "interp")

CPU_SIZE_NOTE = (
    "CPU sizes are smaller than the GPU list's: a 2-core CPU runs 10L-64 at about 2-6e4 output "
    "voxels/s, so one 128^3 inference takes ~40-100 s and one 256^3 or brain-sized "
    "(394 x 466 x 378) pass 5-30 min, times 6 runs (warm-up + 5) and again in PyTorch. The "
    "CPU list keeps the GPU list's structure (two depths, two volume sizes, the paper's batch "
    "64 of 21^3, the MNI-sized zoom) at sizes whose whole suite finishes in about 15 minutes.")
SMOKE_NOTE = "smoke: tiny net and sizes, to check that every path runs; the numbers mean nothing."


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case.

    ``shape`` is the volume (x, y, z): the network's input and output for
    inference, the zoom's input for interp. ``tile``: run through
    ``run_network`` in tiles of that edge (host transfers included).
    """

    name: str
    suite: str
    precision: str = "fp32"
    layers: int = 10
    filters: int = 64
    shape: tuple[int, int, int] | None = None
    batch: int = 1
    patch: int | None = None
    tile: int | None = None
    scale: float = 2.0
    note: str = ""

    @property
    def sizes(self) -> str:
        if self.suite == "train":
            return f"{self.batch} x {self.patch}^3"
        text = " x ".join(map(str, self.shape))
        if len(set(self.shape)) == 1:
            text = f"{self.shape[0]}^3"
        if self.suite == "interp":
            return f"{text} x{self.scale:g}"
        return text + (f" tiles {self.tile}" if self.tile else "")

    @property
    def model(self) -> str:
        return "" if self.suite == "interp" else f"{self.layers}L-{self.filters}"


def _edge(shape: tuple[int, int, int]) -> str:
    return str(shape[0]) if len(set(shape)) == 1 else "x".join(map(str, shape))


def inference(layers: int, filters: int, shape: tuple[int, int, int], precision: str,
              tile: int | None = None, label: str | None = None, note: str = "") -> Case:
    where = label or _edge(shape)
    return Case(f"infer_{layers}L{filters}_{where}{'_tiled' if tile else ''}_{precision}",
                "inference", precision, layers, filters, shape, tile=tile, note=note)


def train(layers: int, filters: int, batch: int, patch: int) -> Case:
    return Case(f"train_{layers}L{filters}_b{batch}x{patch}_fp32", "train", "fp32", layers,
                filters, batch=batch, patch=patch,
                note="the package's train step runs in float32 only")


def interp(shape: tuple[int, int, int], scale: float) -> Case:
    return Case(f"interp_{_edge(shape)}_x{scale:g}", "interp", "fp32", shape=shape, scale=scale,
                note="zoom_device: NumPy input (host->device transfer timed), result left on "
                     "the device; scipy: NumPy in and out")


BRAIN_X2 = (394, 466, 378)
TILED_NOTE = ("run_network in tiles (halo = receptive radius): NumPy in, NumPy out, so host "
              "transfers and tile assembly are timed")


def gpu_cases(precisions: Sequence[str]) -> list[Case]:
    cases = []
    for layers, shape in ((10, (128,) * 3), (20, (128,) * 3)):
        cases += [inference(layers, 64, shape, p) for p in precisions]
    cases += [inference(10, 64, BRAIN_X2, p, tile=192, label="brain394x466x378", note=TILED_NOTE)
              for p in precisions]
    cases += [inference(10, 64, (256,) * 3, p) for p in precisions]
    cases += [train(10, 64, 64, 21), train(10, 64, 256, 21)]
    cases += [interp((197, 233, 189), 2.0)]
    return cases


def _default_precisions(precisions: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(precisions, extra)``: fp32 everywhere and bf16 once, unless ``precisions`` are given."""
    if precisions is None:
        return ["fp32"], ["bf16"]
    return list(precisions), []


def cpu_cases(precisions: Sequence[str] | None) -> list[Case]:
    """fp32 everywhere and one bf16 inference case, unless ``precisions`` are given."""
    precisions, extra = _default_precisions(precisions)
    cases = [inference(10, 64, (64,) * 3, p) for p in precisions + extra]
    cases += [inference(20, 64, (64,) * 3, p) for p in precisions]
    cases += [inference(10, 64, (96,) * 3, p) for p in precisions]
    cases += [train(10, 64, 16, 21), train(10, 64, 64, 21)]
    cases += [interp((197, 233, 189), 2.0)]
    return cases


def smoke_cases(precisions: Sequence[str] | None) -> list[Case]:
    precisions, extra = _default_precisions(precisions)
    cases = [inference(3, 8, (16,) * 3, p) for p in precisions + extra]
    cases += [inference(3, 8, (16,) * 3, "fp32", tile=8, note=TILED_NOTE)]
    cases += [train(3, 8, 2, 9)]
    cases += [interp((20, 20, 20), 2.0)]
    return cases


def select(platform: str, smoke: bool, suite: str, precisions: Sequence[str] | None,
           patterns: Sequence[str] | None) -> list[Case]:
    """The cases to run. ``patterns``: names or shell-style globs (``infer_10L64_64_*``).

    Raises:
      ValueError: a pattern that matches no case of the selected list.
    """
    if smoke:
        cases = smoke_cases(precisions)
    elif platform == "cpu":
        cases = cpu_cases(precisions)
    else:
        cases = gpu_cases(precisions or PRECISIONS)
    if suite != "all":
        cases = [c for c in cases if c.suite == suite]
    if patterns:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p)
                                                    for c in cases)]
        if unmatched:
            names = ", ".join(c.name for c in cases) or "none"
            raise ValueError(f"--cases: {', '.join(unmatched)} matches no case of this list "
                             f"(available: {names})")
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    return cases
