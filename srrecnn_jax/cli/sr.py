"""``srrecnn sr``: one image with ``-o``, or batch mode with ``--out-dir``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from srrecnn_jax.cli import common, sr_adapt, sr_auto
from srrecnn_jax.config import ACQUISITIONS, DEFAULT_LAMBDA, INTERPOLATIONS, PRECISIONS
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.inference_options import CEILING, HEADERS, InferenceOptions

if TYPE_CHECKING:
    import SimpleITK as sitk

    from srrecnn_jax.checkpoint import LoadedModel


def add_to(commands) -> None:
    p = commands.add_parser("sr", help="super-resolve 3-D images",
                            description="Super-resolve 3-D images as the original release "
                            "did: normalise by the maximum, cubic-spline zoom, network, "
                            "residual, de-normalise, clamp at the input minimum. One input "
                            "with -o, or any number of files, folders, DICOM series folders "
                            "and .txt lists of paths with --out-dir (batch mode: pipelined, "
                            "resumable, a manifest, one bad file does not stop the rest).")
    _add_paths(p)
    _add_inference(p)
    sr_adapt.add_options(p.add_argument_group("fine-tuning on the scan (--adapt)"))
    _add_batch(p.add_argument_group("batch mode (--out-dir)"))
    p.set_defaults(run=run)
    _add_merge(commands)


def _add_paths(p) -> None:
    """Inputs, outputs, model and reference."""
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="image file (NIfTI, NRRD, MetaImage), DICOM series folder, folder "
                   "(searched recursively with --glob) or .txt file listing paths (relative "
                   "to the list file)")
    p.add_argument("-o", "--output", type=Path,
                   help="output image for a single input (float32); missing folders above "
                   "it are created")
    p.add_argument("--out-dir", type=Path,
                   help="batch mode: write outputs here (created if missing), mirroring each "
                   "input's place below the folder it was found in")
    p.add_argument("-m", "--model", type=common.model, required=True,
                   help="model folder (from `srrecnn convert`), training run folder, "
                   ".caffemodel file, or the name of a shipped model (`srrecnn models`; "
                   "`default`)")
    p.add_argument("-r", "--reference", type=Path,
                   help="high-resolution image of another modality, for multimodal models; "
                   "resampled onto the output grid if it is not on it already")
    p.add_argument("--reference-pattern", metavar="OLD:NEW",
                   help="batch mode: each input's reference is the file named with OLD "
                   "replaced by NEW (e.g. T1w:T2w)")
    p.add_argument("--prototxt", type=Path, help="deploy .prototxt to check a .caffemodel against")
    p.add_argument("--force", dest="force", action="store_true",
                   help="replace existing outputs (batch mode otherwise skips an output the "
                   "manifest records as made from the same input and reference by the same "
                   "model, scale and options, if it still reads back as written; any other "
                   "existing output is made again, with a warning)")
    p.add_argument("--overwrite", dest="force", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true",
                   help="also estimate the input's noise (%% of its maximum) and predict, by "
                   "a self-check on the input acquired once more at the scale, whether the "
                   "model beats cubic spline on it (monomodal models; a warning when it is "
                   "predicted to lose); with --json (one input) in the JSON, in batch mode "
                   "in each manifest row")
    sr_auto.add_options(p)


def _add_inference(p) -> None:
    """The options of ``InferenceOptions``: how each image is super-resolved."""
    p.add_argument("-s", "--scale", type=common.scale,
                   help="zoom factor: one number or x,y,z (e.g. 2 or 2,2,2.5); the output "
                   "may have at most 2^32 voxels and must fit this machine's memory")
    p.add_argument("--isotropic", action="store_true",
                   help="instead of -s, for thick-slice scans: each input's factors from "
                   "its own header, so that its output is isotropic at its in-plane spacing "
                   "(the thick axis is the one of largest spacing, any of x, y, z; "
                   "non-integer factors allowed; in a batch an input of ambiguous geometry "
                   "is one failed job); with a thick-slice model, -m thick-slice")
    p.add_argument("--target-spacing", type=common.positive_float, metavar="MM",
                   help="with --isotropic: the output's voxel size instead of the in-plane "
                   "spacing (in a batch, of every output)")
    p.add_argument("--tile", type=common.positive_int,
                   help="run the network in tiles of N^3 output voxels (exact: equals the "
                   "whole-volume result); default: whole volume unless it would not fit memory")
    p.add_argument("--order", type=common.order, default=3,
                   help="spline order of the zoom (default 3)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="arithmetic of the network's convolutions: fp32 (default, exact "
                   "float32), tf32 (GPU tensor cores, 10-bit mantissa products; as fp32 on "
                   "CPU) or bf16 (bfloat16 operands, float32 sums; the first layer, which reads "
                   "the intensities, stays fp32)")
    p.add_argument("--exact", action="store_true",
                   help="convolutions exact to float32 rounding. By default the CPU runs "
                   "Winograd F(4,3), about 10%% faster per layer, whose output stays within "
                   "3e-5 of the output range of exact arithmetic (measured 2e-6 on real "
                   "brains); "
                   "--exact runs F(2,3) instead. No effect on GPUs")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default="device",
                   help="where the cubic-spline zoom runs: device (JAX, GPU when present; "
                   "default) or scipy (the original's scipy.ndimage.zoom on the CPU); they "
                   "agree to float32 rounding")
    p.add_argument("--no-residual", action="store_true",
                   help="do not add the interpolated image to the network output")
    p.add_argument("--header", choices=HEADERS, default="consistent",
                   help="output geometry: 'consistent' keeps the first and last voxel centres "
                   "where the zoom puts them (default); 'original' writes spacing/scale as the "
                   "original release did")
    p.add_argument("--ceiling", type=_ceiling, default=CEILING, metavar="X|off",
                   help=f"clip the output at X times the input's maximum (default {CEILING:g}; "
                   "a warning counts the clipped voxels: the model over-sharpened the scan); "
                   "'off' keeps the original release's range, clamped at the minimum only")
    p.add_argument("--acquisition", choices=ACQUISITIONS, default="none",
                   help="how the input was acquired: the network's output is then made to "
                   "give back the input when acquired that way again (a data-consistency "
                   "projection). 'kspace': a scanner's acquisition, the central part of "
                   "k-space (real scans); 'gaussian': the release's simulation (Gaussian "
                   "blur, then sampling); 'slice_profile': thick slices (a Gaussian slice "
                   "profile of FWHM the slice spacing); 'none' (default): the network's "
                   "output as it is")
    p.add_argument("--consistency", type=float, metavar="LAMBDA",
                   help="with --acquisition, the projection's regularisation: 0 makes the "
                   "output give back the input exactly, larger trusts the input's noise less "
                   "(default "
                   + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LAMBDA.items()) + ")")


def _add_batch(batch) -> None:
    """Batch mode's own options."""
    batch.add_argument("--glob", default="*.nii*",
                       help="file pattern when searching folders (default '*.nii*')")
    batch.add_argument("--suffix", default="_SR",
                       help="added to each output's name before the extension (default _SR)")
    batch.add_argument("--output-template",
                       help="output path below --out-dir, with {dir} {stem} {ext} {suffix}, "
                       "e.g. '{dir}/{stem}_x2{ext}'")
    batch.add_argument("--manifest", type=Path,
                       help="JSONL record of the runs, one row per job and run, each run "
                       "appending its rows under its run id (default "
                       "OUT_DIR/srrecnn_manifest.jsonl); a rerun trusts an existing output "
                       "only as this records it")
    batch.add_argument("--workers", type=common.positive_int, default=2,
                       help="threads reading and interpolating ahead of the device (default 2)")
    batch.add_argument("--bucket", type=common.positive_int, default=8,
                       help="pad volumes to a multiple of N voxels so nearby sizes share one "
                       "compilation; results unchanged (default 8)")
    batch.add_argument("--dry-run", action="store_true", help="list the work and stop")
    batch.add_argument("--quiet", action="store_true", help="no progress bar or warnings")
    batch.add_argument("--json", action="store_true",
                       help="print a JSON summary on stdout (a single input: its output's "
                       "size, spacing, time and, with --check, the checks)")
    common.add_distributed(batch, "takes its share of the files; all wait at the end until "
                           "every process has ended, and one that ended before finishing "
                           "its share is named in an error (exit status 1)")
    batch.add_argument("--shard", type=common.shard, metavar="I/N",
                       help="take share I of N (0 <= I < N) of the sorted jobs, every N-th "
                       "from the I-th, with no coordinator and no waiting (a Slurm job "
                       "array --array=0-3: --shard $SLURM_ARRAY_TASK_ID/4); each "
                       "share appends to its own manifest part, and every run folds the "
                       "parts that exist into the manifest")


def _add_merge(commands) -> None:
    m = commands.add_parser("merge-manifest", help="fold a batch's manifest parts into its "
                            "manifest",
                            description="Fold the manifest parts that --distributed or "
                            "--shard processes left in a batch's output folder "
                            "(srrecnn_manifest.part-I-of-N.jsonl) into its manifest, keeping "
                            "every row already there. Safe to repeat, and while --distributed "
                            "or --shard processes still run (each run also does this when it "
                            "ends); refused while a one-process run writes to the folder.")
    m.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the batch's --out-dir")
    m.add_argument("--manifest", type=Path,
                   help="the batch's --manifest (default OUT_DIR/srrecnn_manifest.jsonl)")
    m.set_defaults(run=run_merge)


def _ceiling(text: str) -> float | None:
    """``--ceiling``: a number, or ``off`` for none (checked by ``InferenceOptions``)."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The ``InferenceOptions`` of the command line, for one file and for each batch job.
    With ``--isotropic`` in a batch (no scale yet) the scale is 1, a placeholder: each
    job's factors come from its own header (``per_input_settings``)."""
    return InferenceOptions(1.0 if args.scale is None else args.scale, order=args.order,
                            tile=args.tile, residual=False if args.no_residual else None,
                            header=args.header, precision=args.precision,
                            interpolation=args.interpolation, exact=args.exact,
                            ceiling=args.ceiling, acquisition=args.acquisition,
                            consistency=args.consistency)


def per_input_settings(args: argparse.Namespace) -> dict:
    """The ``batch.Options`` settings that act on each input of a batch on its own:
    ``--isotropic``, ``--target-spacing``, ``--adapt``, ``--slice-thickness``."""
    return {"isotropic": args.isotropic, "target_spacing": args.target_spacing,
            "adapt": args.adapt, "slice_thickness": args.slice_thickness}


def check_scale(args: argparse.Namespace) -> None:
    """``-s`` or ``--isotropic``, one of them; ``--target-spacing`` with ``--isotropic``."""
    if args.isotropic and args.scale is not None:
        raise SrrecnnError("--isotropic: give either -s or --isotropic, not both")
    if args.target_spacing is not None and not args.isotropic:
        raise SrrecnnError("--target-spacing: applies with --isotropic")
    if not args.isotropic and args.scale is None:
        raise SrrecnnError("-s/--scale: give the zoom factors, or --isotropic")


def _scale_from_header(args: argparse.Namespace) -> None:
    """``-s`` or ``--isotropic``: for a single input its factors from its header (a
    batch finds each input's when it reads it)."""
    check_scale(args)
    if not args.isotropic or args.out_dir is not None or len(args.inputs) != 1:
        return
    from srrecnn_jax.images import image_spacing
    from srrecnn_jax.scales import isotropic_factors

    size, spacing = image_spacing(args.inputs[0], "input image")
    args.scale = isotropic_factors(size, spacing, args.target_spacing)


def run(args: argparse.Namespace) -> int:
    sr_adapt.check(args)
    sr_auto.check(args)
    _scale_from_header(args)
    if args.out_dir is not None:
        if args.output is not None:
            raise SrrecnnError("-o/--output: give either -o (one input) or --out-dir, not both")
        if args.reference is not None:
            raise SrrecnnError("--reference: in batch mode pair inputs with "
                               "--reference-pattern OLD:NEW")
        return run_batch(args)
    if args.output is None:
        raise SrrecnnError("-o/--output: give an output file, or --out-dir for batch mode")
    from srrecnn_jax.files import is_list_file
    from srrecnn_jax.inference import super_resolve_file

    if len(args.inputs) > 1 or is_list_file(args.inputs[0]):
        raise SrrecnnError("-o/--output: takes a single input; use --out-dir for several")

    start = time.perf_counter()
    options = inference_options(args)
    def warn(message: str) -> None:
        if not args.quiet:
            print(f"srrecnn: warning: {args.inputs[0]}: {message}", file=sys.stderr)

    adapted, loaded, image = {}, None, None
    if args.adapt is not None:
        result, adapted = sr_adapt.run(args, options, warn)
    elif args.auto_model:
        result, adapted = sr_auto.run(args, options, warn)
    else:
        if args.check:  # loaded and read once, for the run and the checks
            loaded, image = _checked_inputs(args)
        result = super_resolve_file(args.inputs[0], args.output, loaded or args.model,
                                    options, args.reference, prototxt=args.prototxt,
                                    force=args.force, warn=warn, image=image)
    seconds = time.perf_counter() - start
    size = "x".join(str(n) for n in result.GetSize())
    spacing = "x".join(f"{s:.4g}" for s in result.GetSpacing())
    print(f"{args.output}: {size} voxels of {spacing} mm ({seconds:.1f} s)", file=sys.stderr)
    facts = {"input": str(args.inputs[0]), "output": str(args.output),
             "size": list(result.GetSize()), "spacing": list(result.GetSpacing()),
             "seconds": round(seconds, 3)} | adapted
    if args.check and not args.auto_model:  # --auto-model has checked already
        facts |= _check(args, options, loaded, image)
    if args.json:
        print(json.dumps(facts))
    return 0


def _checked_inputs(args: argparse.Namespace) -> tuple[LoadedModel, sitk.Image]:
    """For ``--check``: the output checked, then ``--model`` loaded and the single input
    read, once for both the run and the checks."""
    from srrecnn_jax.files import check_output_file
    from srrecnn_jax.images import read_input
    from srrecnn_jax.inference import SuperResolver

    inputs = [args.inputs[0]] + ([args.reference] if args.reference else [])
    check_output_file(args.output, args.force, inputs, make_folder=True)
    loaded = SuperResolver.load(args.model, args.prototxt).model
    return loaded, read_input(args.inputs[0], "input image")


def _check(args: argparse.Namespace, options: InferenceOptions,
           loaded: LoadedModel | None = None, image: sitk.Image | None = None) -> dict:
    """The per-scan checks of the single input (``guardrails.check_scan``) for ``loaded``
    (default: ``--model`` loaded here) on ``image`` (default: the input, read here), said
    on stderr, with a warning when the model is predicted to lose to cubic spline."""
    from srrecnn_jax.guardrails import check_scan, losing_note
    from srrecnn_jax.images import read_input, to_array
    from srrecnn_jax.inference import SuperResolver

    loaded = loaded or SuperResolver.load(args.model, args.prototxt).model
    lr = to_array(image if image is not None else read_input(args.inputs[0], "input image"))
    facts = check_scan(loaded.params, loaded.config, lr, options.scale, options.precision,
                       options.acquisition, options.consistency)
    gain = facts["self_check_gain_db"]
    said = (f"{args.inputs[0]}: noise about {facts['noise_percent']:.2g}% of the maximum"
            + ("" if gain is None else f"; self-check: model {gain:+.2f} dB against "
               f"cubic spline ({facts['self_check_psf']} acquisition)"))
    losing = losing_note(facts)
    if not args.quiet:
        print(said, file=sys.stderr)
        if losing:
            print(f"srrecnn: warning: {args.inputs[0]}: {losing}; try --auto-model "
                  "(self-checks every shipped model on this scan), or compare with a "
                  "spline zoom", file=sys.stderr)
    return facts


def run_batch(args: argparse.Namespace) -> int:
    """Batch mode; exit status 0, 1 if any job failed or another process of the run ended
    before finishing its share, 130 if interrupted."""
    if args.shard is not None:
        if args.distributed:
            raise SrrecnnError("--shard: give either --shard or --distributed, not both")
        process, count = args.shard
    else:
        process, count = common.join_processes(args, collectives=False)
    from srrecnn_jax import batch

    def say(message: str) -> None:
        if not args.quiet:
            print(f"srrecnn: warning: {message}", file=sys.stderr)

    presence, run_id = None, None
    if args.distributed and count > 1:  # before anything that can fail: see start_together
        presence, run_id = batch.start_together(args.out_dir, process, count, warn=say)
    try:
        return _run_batch(args, process, count, presence, run_id)
    finally:
        if presence is not None:
            presence.leave()


def _run_batch(args: argparse.Namespace, process: int, count: int, presence,
               run_id: str | None) -> int:
    from srrecnn_jax import batch
    from srrecnn_jax import jobs as planning
    from srrecnn_jax.manifest import MANIFEST, Record

    jobs = planning.plan(args.inputs, args.out_dir, args.glob, args.suffix,
                         args.output_template, args.reference_pattern,
                         manifest=args.manifest or args.out_dir / MANIFEST)
    if args.dry_run:
        for job in planning.shard(jobs, process, count):
            ref = f"  [reference {job.reference}]" if job.reference else ""
            print(f"{job.input} -> {job.output}{ref}")
        return 0
    options = batch.Options(inference_options(args), bucket=args.bucket,
                            overwrite=args.force, readers=args.workers, check=args.check,
                            **per_input_settings(args))
    start, done_voxels = time.perf_counter(), [0]
    with common.stoppable(len(planning.shard(jobs, process, count)), "vol", args.quiet,
                          "srrecnn: stopping after the volumes in flight are written") \
            as (stop, bar):
        def progress(record: Record, voxels: int) -> None:
            if record.status == "error":
                shown = common.job_error_line(record.error, record.parameter)
                bar.write(f"srrecnn: error: {shown}", file=sys.stderr)
            done_voxels[0] += voxels
            bar.set_postfix_str(f"{done_voxels[0] / (time.perf_counter() - start):.3g} "
                                "voxels/s")
            bar.update(1)

        def warn(message: str) -> None:
            if not args.quiet:
                bar.write(f"srrecnn: warning: {message}", file=sys.stderr)

        summary, part = batch.run(jobs, args.model, options, args.out_dir, args.prototxt,
                                  args.manifest, process, count, stop, progress, warn,
                                  run_id=run_id, presence=presence)
    rate = summary.voxels / summary.seconds if summary.seconds else 0.0
    if not args.quiet:
        redone = f" ({summary.redone} made again)" if summary.redone else ""
        print(f"srrecnn: {summary.ok} written{redone}, {summary.skipped} skipped (complete), "
              f"{summary.errors} failed in {summary.seconds:.1f} s; {rate:.3g} voxels/s; "
              f"device busy {summary.utilisation:.0%}; manifest {part}", file=sys.stderr)
    if args.json:
        facts = dataclasses.asdict(summary) | {"utilisation": summary.utilisation,
                                               "voxels_per_s": rate, "manifest": str(part),
                                               "process": process, "processes": count}
        print(json.dumps(facts))
    if summary.missing:
        print(f"srrecnn: error: {args.out_dir}: {'; '.join(summary.missing)}; run the "
              "same command again to do those jobs", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 1 if summary.errors or summary.missing else 0


def run_merge(args: argparse.Namespace) -> int:
    """``srrecnn merge-manifest``: fold the manifest parts in a batch's output folder into
    its manifest."""
    from srrecnn_jax import batch
    from srrecnn_jax.manifest import MANIFEST

    if not args.out_dir.is_dir():
        raise SrrecnnError(f"{args.out_dir}: no such output folder")
    manifest = args.manifest or args.out_dir / MANIFEST
    with batch.folder_lock(args.out_dir, shared=True, note="merge-manifest"):
        parts = batch.merge(manifest)  # not while a one-process run appends to the manifest
    if not parts:
        raise SrrecnnError(f"{args.out_dir}: no manifest parts ({manifest.stem}.part-*.jsonl) "
                           "to merge")
    print(f"srrecnn: {len(parts)} manifest parts merged into {manifest}", file=sys.stderr)
    return 0
