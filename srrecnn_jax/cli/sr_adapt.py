"""``--adapt``: fine-tune the model on each input before running it
(``srrecnn_jax.adapt``), with ``--slice-thickness``; for a single input (``srrecnn sr
-o``) also ``--save-adapted``, and its run. Batch mode and ``srrecnn bids`` pass the
options to the batch pipeline (``batch.Options.adapt``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from srrecnn_jax.adapt_settings import DEFAULT_SECONDS
from srrecnn_jax.cli import common
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.inference_options import InferenceOptions


def add_options(group, save: bool = True) -> None:
    """The options of fine-tuning on the scan; ``save``: with ``--save-adapted`` (single
    input only)."""
    group.add_argument("--adapt", type=common.positive_float, nargs="?",
                       const=DEFAULT_SECONDS, metavar="SECONDS",
                       help="thick-slice inputs: first fine-tune the model's last layers on "
                       "each scan itself for SECONDS of wall time (default "
                       f"{DEFAULT_SECONDS:g}), on pairs made by degrading its in-plane axes "
                       "to its slice profile; the adapted weights are used, for that scan "
                       "only, if they beat the model on held-out slices by 0.1 dB (PSNRs on stderr "
                       "and in --json for one input, in the manifest row or sidecar of "
                       "each in a batch, where each device fine-tunes one scan at a time). "
                       "Put it after the inputs, or write --adapt=SECONDS")
    group.add_argument("--slice-thickness", type=common.positive_float, metavar="MM",
                       help="with --adapt: the slice thickness, when slices are thicker or "
                       "thinner than their spacing (gaps, overlap); the slice profile of "
                       "the pairs has this FWHM (default: the slice spacing; in a batch the "
                       "same MM for every input). Refused without --adapt: the shipped "
                       "models have one trained profile")
    if save:
        group.add_argument("--save-adapted", type=Path, metavar="DIR",
                           help="with --adapt and a single input (-o): also write the "
                           "adapted model folder (kept by the held-out check or not; its "
                           "config.json records which), never over an existing folder "
                           "without --force")


def check_settings(args: argparse.Namespace) -> None:
    """Refuse ``--slice-thickness`` without ``--adapt``, and ``--adapt`` with
    ``--no-residual`` (``srrecnn sr`` and ``srrecnn bids``)."""
    if args.adapt is None:
        if args.slice_thickness is not None:
            raise SrrecnnError("applies with --adapt only (without it the network runs as "
                               "trained, for one slice profile)", "slice_thickness")
        return
    if args.no_residual:
        raise SrrecnnError("fine-tunes the model as trained, with its residual; drop "
                           "--no-residual", "adapt")


def check(args: argparse.Namespace) -> None:
    """Refuse combinations ``srrecnn sr --adapt`` does not support, before any work:
    ``check_settings``, ``--save-adapted`` without ``--adapt`` or in batch mode, and a
    reference (monomodal models only)."""
    check_settings(args)
    if args.save_adapted is not None:
        if args.adapt is None:
            raise SrrecnnError("applies with --adapt only (without it the network runs as "
                               "trained, for one slice profile)", "save_adapted")
        if args.out_dir is not None:
            raise SrrecnnError("applies to a single input (-o), not to batch mode: there "
                               "each scan's adapted weights serve that scan only",
                               "save_adapted")
    if args.adapt is not None and (args.reference is not None
                                   or args.reference_pattern is not None):
        raise SrrecnnError("takes monomodal models only; no --reference or "
                           "--reference-pattern", "adapt")


def run(args: argparse.Namespace, options: InferenceOptions,
        warn: Callable[[str], None]) -> tuple:
    """Fine-tune, then super-resolve the single input with the model the held-out check
    chose. Every output is checked before any work. Returns the output image and the
    ``{"adapt": ...}`` facts for ``--json``."""
    from srrecnn_jax.adapt import AdaptSettings, adapt, slice_fwhm
    from srrecnn_jax.checkpoint import check_model_output, load_model, write_model
    from srrecnn_jax.files import check_output_file
    from srrecnn_jax.images import read_input, to_array
    from srrecnn_jax.inference import super_resolve_file

    source = args.inputs[0]
    check_output_file(args.output, args.force, [source], make_folder=True)
    protected = [source, args.model]
    if args.save_adapted is not None:
        check_model_output(args.save_adapted, args.force, protected)
    image = read_input(source, "input image")
    loaded = load_model(args.model, args.prototxt)
    fwhm = slice_fwhm(image.GetSpacing(), options.scale, args.slice_thickness)
    result = adapt(loaded, to_array(image), options.scale, fwhm,
                   AdaptSettings(seconds=args.adapt), order=options.order,
                   interpolation=options.interpolation)
    db = result.heldout_psnr
    verdict = ("adapted weights used" if result.kept
               else "not better than the model: the model is used unchanged")
    print(f"srrecnn: adapt: {result.steps} steps in {result.seconds:.1f} s; held-out PSNR "
          f"spline {db['spline']:.2f}, model {db['start']:.2f}, adapted {db['adapted']:.2f} "
          f"dB: {verdict}", file=sys.stderr)
    facts = result.facts()
    if args.save_adapted is not None:
        write_model(args.save_adapted, result.adapted, args.force, protected)
        facts["saved"] = str(args.save_adapted)
    output = super_resolve_file(source, args.output, result.model, options,
                                force=args.force, warn=warn, image=image)
    return output, {"adapt": facts}
