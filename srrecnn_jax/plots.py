"""Figures: training curves (loss; held-out PSNR) and the demo's montage, written as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from srrecnn_jax.structured import parse_json
from srrecnn_jax.writing import atomic_output


def draw_curves(metrics_file: Path, png: Path) -> None:
    """Plot ``metrics.jsonl`` (one JSON object per logged step) into ``png`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = metrics_file.read_text(encoding="utf-8").splitlines()
    rows = [parse_json(line) for line in lines if line.strip()]
    if not rows:
        return
    validated = [r for r in rows if "val_psnr" in r]
    figure, axes = plt.subplots(1, 2 if validated else 1, figsize=(10 if validated else 5, 3.6),
                                squeeze=False)
    loss = axes[0][0]
    loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue")
    loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    if validated:
        score = axes[0][1]
        steps = [r["step"] for r in validated]
        score.plot(steps, [r["val_psnr"] for r in validated], "o-", label="model")
        score.plot(steps, [r["val_spline_psnr"] for r in validated], "s--", label="cubic spline")
        score.set(xlabel="step", ylabel="PSNR (dB)", title="held-out PSNR")
        score.legend()
    save_figure(figure, png, dpi=100)


def draw_montage(spline: np.ndarray, sr: np.ndarray, hr: np.ndarray, png: Path,
                 scores: dict[str, float]) -> None:
    """Three central planes (rows) of spline, SR, HR and |SR - HR| (columns); (x, y, z) arrays."""
    draw_planes([(f"spline ({scores['psnr_spline']:.2f} dB)", spline),
                 (f"SR ({scores['psnr_sr']:.2f} dB)", sr), ("HR", hr),
                 ("|SR - HR| (x4)", 4 * np.abs(sr - hr))], png, top=float(hr.max()))


def draw_planes(columns: list[tuple[str, np.ndarray]], png: Path, title: str = "",
                top: float | None = None) -> None:
    """Three central planes (rows) of each ``(name, volume)`` (columns), on one grey
    scale from 0 to ``top`` (default: the first volume's maximum); (x, y, z) arrays of
    one shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = columns[0][1]
    centre = [n // 2 for n in first.shape]
    planes = {"sagittal": lambda a: a[centre[0]].T, "coronal": lambda a: a[:, centre[1]].T,
              "axial": lambda a: a[:, :, centre[2]].T}
    top = float(first.max()) if top is None else top
    figure, axes = plt.subplots(3, len(columns), figsize=(3 * len(columns), 9),
                                squeeze=False)
    for row, (plane, cut) in enumerate(planes.items()):
        for col, (name, volume) in enumerate(columns):
            ax = axes[row][col]
            ax.imshow(cut(volume), cmap="gray", vmin=0, vmax=top, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(plane)
    if title:
        figure.suptitle(title)
    save_figure(figure, png, dpi=80)


def save_figure(figure, png: Path, dpi: int) -> None:
    """Write a matplotlib figure as PNG under a temporary name, rename, close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        with atomic_output(png) as staged:
            figure.savefig(staged, dpi=dpi, format="png")
    finally:
        plt.close(figure)
