"""Write the latest checkpoint (or ``--step``) of a run fine-tuned from the original x2
weights as a model folder, with the scales and voxel size it trains on (recorded in each
checkpoint) and the original weights' provenance (CeCILL-B: a fine-tuned model is a
derivative work of the original release): the monomodal weights' for a one-channel
model, the multimodal weights' for a two-channel one.

    python checkpoints/scripts/export.py runs/thick_slice checkpoints/thick_slice/model

A run that is still training has checkpoints but no final model; this is how its
progress is scored (``checkpoints/scripts/evaluate.py``) and trained on in a new run
(``--init`` from the folder written here).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from srrecnn_jax.checkpoint import checkpoint_steps, load_model, write_model
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.sources import RELEASE


def positive(text: str) -> float:
    """A finite number > 0 (a scale or a voxel size): ``nan`` and ``inf`` are refused here,
    before a folder is written that loading would then refuse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the training run folder")
    parser.add_argument("out", type=Path, help="model folder to write (replaced)")
    parser.add_argument("--earlier-steps", type=int, default=0, metavar="N",
                        help="steps of the earlier runs this one was initialised from "
                             "(--init), so that the folder records the steps in all")
    parser.add_argument("--step", type=int, help="this checkpoint (default: the latest)")
    parser.add_argument("--scales", type=positive, nargs="+", metavar="S",
                        help="the scales trained, for a run from HDF5 patches (which do not "
                             "record them); refused when the checkpoint records its own")
    parser.add_argument("--spacing", type=positive, metavar="MM",
                        help="the HR voxel size (mm) trained on, likewise")
    args = parser.parse_args(argv)
    if args.out.resolve() in (args.run.resolve(), *args.run.resolve().parents):
        parser.error(f"{args.out}: would replace the run {args.run}; write the model elsewhere")
    steps = checkpoint_steps(args.run)
    if not steps:
        parser.error(f"{args.run}: no checkpoint yet")
    step = steps[-1] if args.step is None else args.step
    if step not in steps:
        parser.error(f"{args.run}: no checkpoint of step {step} (have {steps})")
    try:
        loaded = load_model(args.run / "checkpoints" / str(step))
    except SrrecnnError as error:  # an unreadable checkpoint: one line, no traceback
        parser.error(str(error))
    for name, value in (("scales", args.scales), ("spacing", args.spacing)):
        if value is not None and getattr(loaded, f"trained_{name}") is not None:
            parser.error(f"--{name}: {args.run} records its own")
    loaded.trained_scales = loaded.trained_scales or args.scales
    loaded.trained_spacing = loaded.trained_spacing or args.spacing
    loaded.origin = {"kind": "srrecnn-jax fine-tuning", "run": str(args.run),
                     "step": step, "steps_in_all": args.earlier_steps + step,
                     "fine_tuned_from": RELEASE[loaded.config.in_channels]}
    try:
        write_model(args.out, loaded, force=True, inputs=[args.run])
    except SrrecnnError as error:  # e.g. the output's folder does not exist
        parser.error(str(error))
    print(f"{args.out}: step {step}, scales {loaded.trained_scales}, "
          f"spacing {loaded.trained_spacing} mm")


if __name__ == "__main__":
    main()
