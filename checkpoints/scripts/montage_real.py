"""A real low-resolution scan without truth (nibabel's 2 mm T1) at x2: cubic spline beside
shipped models, three central planes, one grey scale (``plots.draw_planes``).

    python checkpoints/scripts/montage_real.py docs/img/real_2mm_x2.png real-x2 mono-x2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srrecnn_jax import catalog, sources
from srrecnn_jax.evaluation import spline_baseline
from srrecnn_jax.images import read_image, to_array
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.plots import draw_planes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", type=Path, help="the figure to write")
    parser.add_argument("models", nargs="+", help="shipped models' names")
    args = parser.parse_args(argv)
    image = read_image(sources.anatomical_2mm(), "nibabel's 2 mm T1")
    columns = []
    for name in args.models:
        sr = to_array(SuperResolver.load(catalog.locate(name)).run(image, 2))
        columns.append((f"{name} x2", sr))
    spline = spline_baseline(to_array(image), columns[0][1].shape)
    draw_planes([("cubic spline x2", spline), *columns], args.png,
                title="a real 2 mm T1 (nibabel's anatomical.nii), no truth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
