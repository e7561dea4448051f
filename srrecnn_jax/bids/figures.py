"""The QC figures: each output's tri-planar montage beside its input zoomed by cubic
spline, and the group's self-check gains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from srrecnn_jax.images import read_volume
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.plots import draw_planes, save_figure


def montage(input_path: Path, output_path: Path, scale: Sequence[float], png: Path,
            order: int = 3) -> None:
    """Three central planes of the input zoomed by a spline of ``order`` (what the network
    starts from), of the output, and of their difference (x4, on the same grey scale),
    side by side, into ``png`` (atomically)."""
    spline = zoom(read_volume(input_path, "input image"), scale, order)
    sr = read_volume(output_path, "output image")
    shape = tuple(min(a, b) for a, b in zip(spline.shape, sr.shape))
    spline, sr = spline[tuple(slice(n) for n in shape)], sr[tuple(slice(n) for n in shape)]
    png.parent.mkdir(parents=True, exist_ok=True)
    draw_planes([("input, cubic spline", spline), ("SR", sr),
                 ("|SR - spline| (x4)", 4 * np.abs(sr - spline))], png,
                title=output_path.name, top=float(max(spline.max(), sr.max())))


def stale(png: Path, sources: Sequence[Path]) -> bool:
    """Whether ``png`` is missing or older than one of ``sources``."""
    try:
        made = png.stat().st_mtime_ns
        return any(s.stat().st_mtime_ns > made for s in sources)
    except OSError:
        return True


def gains(names: Sequence[str], values: Sequence[float], noise: Sequence[float | None],
          png: Path) -> None:
    """Each output's self-check gain over cubic spline (dB, a bar per output, red where the
    model is predicted to lose) and its input's noise, into ``png`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(2.5, 0.35 * len(names) + 1.2)
    figure, axis = plt.subplots(figsize=(8, height))
    rows = np.arange(len(names))
    axis.barh(rows, values, color=["tab:red" if v < 0 else "tab:green" for v in values])
    axis.set_yticks(rows, [f"{n} (noise {f'{z:.2g}%' if z is not None else '?'})"
                           for n, z in zip(names, noise)], fontsize=8)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.invert_yaxis()
    axis.set(xlabel="self-check: predicted gain of SR over cubic spline (dB)",
             title="self-check gains")
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, png, dpi=90)
