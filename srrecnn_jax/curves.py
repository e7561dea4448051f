"""Training curves (loss; validation PSNR of the model and of spline) drawn to a PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path


def draw_curves(metrics_file: Path, png: Path) -> None:
    """Plot ``metrics.jsonl`` (one JSON object per logged step) into ``png`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = metrics_file.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
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


def save_figure(figure, png: Path, dpi: int) -> None:
    """Write a matplotlib figure as PNG under a temporary name, rename, close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    tmp = png.with_name(f".tmp-{os.getpid()}-{png.name}")
    try:
        figure.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, png)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
