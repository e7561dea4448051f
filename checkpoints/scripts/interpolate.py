"""Write the weight-space interpolation of a fine-tuned model and the weights it was
fine-tuned from, ``(1 - alpha) * start + alpha * fine_tuned``, as a model folder.

This is WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022):
a model fine-tuned on one kind of data (here smooth population templates) loses some of
what its starting weights knew of another (real scans); the average of the two keeps
much of the gain on the first kind and is often better than both on the other.
``alpha = 0.5`` is the paper's default where no data of the other kind may choose it,
as here (Colin27 is for evaluation only).

    python checkpoints/scripts/interpolate.py \\
        ../shared/caffe/SRReCNN3D_10Layers_IsoScalex2.caffemodel \\
        mono_x2_400 checkpoints/mono_x2/model --alpha 0.5

(``mono_x2_400``: the fine-tuned run's step 400, written by ``export.py``; see
``checkpoints/HISTORY.md``.)

Both models must have the same architecture. The folder records both sources and
alpha; its trained scales and voxel size are the fine-tuned model's, and so is the
release it derives from (CeCILL-B).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from srrecnn_jax.checkpoint import LoadedModel, fingerprint, load_model, write_model
from srrecnn_jax.errors import SrrecnnError


def interpolate(start: LoadedModel, fine_tuned: LoadedModel, alpha: float) -> LoadedModel:
    """``(1 - alpha) * start + alpha * fine_tuned``, leaf by leaf in float64 and stored as
    float32; ``alpha`` 0 gives ``start``'s parameters, 1 ``fine_tuned``'s, bitwise."""
    if start.config != fine_tuned.config:
        raise ValueError(f"the architectures differ: {start.config.describe()} and "
                         f"{fine_tuned.config.describe()}")
    params = jax.tree_util.tree_map(
        lambda a, b: ((1.0 - alpha) * np.asarray(a, np.float64)
                      + alpha * np.asarray(b, np.float64)).astype(np.float32),
        start.params, fine_tuned.params)
    return LoadedModel(params=params, config=fine_tuned.config,
                       trained_scales=fine_tuned.trained_scales,
                       trained_spacing=fine_tuned.trained_spacing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", type=Path,
                        help="the weights fine-tuning started from (.caffemodel or folder)")
    parser.add_argument("fine_tuned", type=Path, help="the fine-tuned model (any form)")
    parser.add_argument("out", type=Path, help="model folder to write (replaced)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the fine-tuned model, 0 to 1 (default 0.5)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha: {args.alpha} is not between 0 and 1")
    for source in (args.start, args.fine_tuned):
        if args.out.resolve() == source.resolve():
            parser.error(f"{args.out}: is an input; write the average elsewhere")
    try:
        start, fine_tuned = load_model(args.start), load_model(args.fine_tuned)
    except SrrecnnError as error:  # a missing or unreadable model: one line, no traceback
        parser.error(str(error))
    try:
        loaded = interpolate(start, fine_tuned, args.alpha)
    except ValueError as error:
        parser.error(f"{args.start}, {args.fine_tuned}: {error}")
    loaded.origin = {"kind": "srrecnn-jax weight interpolation (WiSE-FT)",
                     "alpha": args.alpha,
                     "start": {"path": str(args.start), "fingerprint": fingerprint(start)},
                     "fine_tuned": {"path": str(args.fine_tuned),
                                    "fingerprint": fingerprint(fine_tuned),
                                    "origin": fine_tuned.origin},
                     "fine_tuned_from": fine_tuned.origin.get("fine_tuned_from")}
    try:
        write_model(args.out, loaded, force=True,
                    inputs=[args.start, args.fine_tuned])
    except SrrecnnError as error:  # e.g. the output's folder does not exist
        parser.error(str(error))
    print(f"{args.out}: {1 - args.alpha:g} x {args.start} + {args.alpha:g} x {args.fine_tuned}")


if __name__ == "__main__":
    main()
