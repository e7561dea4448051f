"""``srrecnn sr --auto-model``: run, on the single input, the shipped model the self-check
predicts does best when the asked-for one is predicted to lose to cubic spline or was
not trained for the scale (``srrecnn_jax.auto_model``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.inference_options import InferenceOptions


def add_options(p) -> None:
    p.add_argument("--auto-model", action="store_true",
                   help="single input (-o), monomodal: self-check the model on the input "
                   "(as --check); if it is predicted to lose to cubic spline, or was not "
                   "trained for the scale, self-check every shipped model trained for the "
                   "scale and run the one predicted to gain most (seconds to a minute per "
                   "model on a CPU); the choice and every predicted gain go to stderr and "
                   "--json")


def check(args: argparse.Namespace) -> None:
    """Refuse combinations ``--auto-model`` does not support, before any work."""
    if not args.auto_model:
        return
    if args.out_dir is not None or len(args.inputs) != 1:
        raise SrrecnnError("applies to a single input (-o), not to batch mode", "auto_model")
    if args.reference is not None:
        raise SrrecnnError("takes monomodal models only; no --reference", "auto_model")
    if args.adapt is not None:
        raise SrrecnnError("give either --auto-model or --adapt (fine-tuning starts from "
                           "the model you name)", "auto_model")


def run(args: argparse.Namespace, options: InferenceOptions,
        warn: Callable[[str], None]) -> tuple:
    """Choose the model, then super-resolve the single input with it. Returns the output
    image and the facts for ``--json``: the input's checks, the chosen model's predicted
    gain as ``self_check_gain_db``, and ``{"auto_model": ...}``."""
    from srrecnn_jax.auto_model import choose
    from srrecnn_jax.checkpoint import load_model
    from srrecnn_jax.files import check_output_file
    from srrecnn_jax.images import read_input, to_array
    from srrecnn_jax.inference import super_resolve_file

    source = args.inputs[0]
    check_output_file(args.output, args.force, [source], make_folder=True)
    image = read_input(source, "input image")
    lr = to_array(image)
    asked = load_model(args.model, args.prototxt)
    if asked.config.in_channels != 1:
        raise SrrecnnError("takes monomodal models only", "auto_model")

    def say(message: str) -> None:
        if not args.quiet:
            print(f"srrecnn: auto-model: {message}", file=sys.stderr)

    choice = choose(asked, lr, options.scale, options.precision, log=say,
                    acquisition=options.acquisition, consistency=options.consistency)
    facts = choice.facts()
    if choice.why is None:
        say("keeping the model asked for")
    elif choice.name is None:
        warn(f"the model asked for is {choice.why}, and no shipped model is predicted to "
             "do better; keeping it (compare with a spline zoom)")
    else:
        say(f"the model asked for is {choice.why}; using {choice.name} "
            f"({choice.gains[choice.name]:+.2f} dB predicted)")
    output = super_resolve_file(source, args.output, choice.model, options,
                                force=args.force, warn=warn, image=image)
    gain = choice.gains[choice.name or "asked"]
    return output, {**choice.checks, "self_check_gain_db": round(gain, 3),
                    "auto_model": facts}
