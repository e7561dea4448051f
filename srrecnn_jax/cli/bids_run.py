"""What ``srrecnn bids`` does at each level, once its arguments are checked
(``cli/bids.py``): plan the jobs with pybids, run the batch, write the sidecars, the
dataset's files and the QC pages."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from srrecnn_jax.cli import common, sr_adapt
from srrecnn_jax.cli.sr import check_scale, inference_options, per_input_settings
from srrecnn_jax.errors import SrrecnnError


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"srrecnn: warning: {message}", file=sys.stderr)


def _command_line(args: argparse.Namespace) -> str:
    return shlex.join(["srrecnn", *(getattr(args, "argv", None) or sys.argv[1:])])


def _validate_input(args: argparse.Namespace) -> None:
    """The official validator on the input, unless skipped or not installed (said once)."""
    if args.skip_bids_validation:
        return
    from srrecnn_jax.bids import validator

    executable = validator.find()
    if executable is None:
        _say(args, f"{validator.EXECUTABLE} is not installed: the input is not validated "
             "(pip install bids-validator-deno)")
        return
    found = validator.errors(args.bids_dir, "raw", executable)
    if found:
        raise SrrecnnError(f"{args.bids_dir}: the BIDS validator finds {len(found)} "
                           f"error{'s' if len(found) > 1 else ''}, the first: {found[0]} "
                           "(--skip-bids-validation to go on)")


def _plan(args: argparse.Namespace):
    """The sources and jobs of the whole run (every share), checked before any write."""
    from srrecnn_jax.bids import layout, naming
    from srrecnn_jax.checkpoint import load_model
    from srrecnn_jax.jobs import Job, check_inputs_kept
    from srrecnn_jax.manifest import MANIFEST

    filters = layout.read_filters(args.bids_filter_file) if args.bids_filter_file else {}
    paired = load_model(args.model).config.in_channels == 2
    if paired and args.adapt is not None:
        raise SrrecnnError("takes monomodal models only, not a two-channel one",
                           "adapt")
    index = layout.index(args.bids_dir, skip=[args.output_dir, args.work_dir])
    sources = layout.select(index, args.suffix, args.participant_label, args.session_label,
                            filters, paired)
    if not sources:
        raise SrrecnnError(f"{args.bids_dir}: no {', '.join(args.suffix)} scans selected")
    resolution = (naming.isotropic_label(args.target_spacing) if args.isotropic
                  else args.scale)
    jobs = [Job(s.path, args.output_dir / naming.derivative_path(s.entities, resolution),
                s.reference) for s in sources]
    check_inputs_kept(jobs, args.work_dir / MANIFEST)
    return sources, jobs


def participant(args: argparse.Namespace) -> int:
    """Super-resolve the selected scans; write sidecars, dataset files, subject pages."""
    if args.model is None:
        raise SrrecnnError("-m/--model: needed at participant level")
    if args.scale is None and not args.isotropic:
        raise SrrecnnError("-s/--scale: needed at participant level (or --isotropic)")
    check_scale(args)
    sr_adapt.check_settings(args)
    from srrecnn_jax import batch

    settings = batch.Options(inference_options(args), overwrite=args.force,
                             readers=args.workers, check=args.check,
                             **per_input_settings(args))  # checked before any work
    _validate_input(args)
    sources, jobs = _plan(args)
    process, count = args.shard or (0, 1)
    summary = _run_batch(args, jobs, settings, process, count)
    from srrecnn_jax.jobs import shard

    share = shard(jobs, process, count)
    _finish(args, sources, share)
    if not args.quiet:
        print(f"srrecnn: {summary.ok} written, {summary.skipped} kept, {summary.errors} "
              f"failed in {summary.seconds:.1f} s; {args.output_dir}", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 1 if summary.errors else 0


def _run_batch(args: argparse.Namespace, jobs, settings, process: int, count: int):
    """This share of the jobs through the batch pipeline (``batch.run``) with
    ``settings`` (``batch.Options``), the manifest in the work folder."""
    from srrecnn_jax import batch
    from srrecnn_jax.jobs import shard
    from srrecnn_jax.manifest import MANIFEST

    with common.stoppable(len(shard(jobs, process, count)), "vol", args.quiet,
                          "srrecnn: stopping after the volumes in flight are written") \
            as (stop, bar):
        def progress(record, voxels: int) -> None:
            if record.status == "error":
                shown = common.job_error_line(record.error, record.parameter)
                bar.write(f"srrecnn: error: {shown}", file=sys.stderr)
            bar.update(1)

        def warn(message: str) -> None:
            if not args.quiet:
                bar.write(f"srrecnn: warning: {message}", file=sys.stderr)

        summary, _ = batch.run(jobs, args.model, settings, args.output_dir,
                               manifest_path=args.work_dir / MANIFEST, process=process,
                               count=count, stop=stop, progress=progress, warn=warn)
    return summary


def _finish(args: argparse.Namespace, sources, share) -> None:
    """Sidecars of this share's outputs (from their manifest rows), the dataset's files,
    and the pages of this share's subjects."""
    from srrecnn_jax import __version__
    from srrecnn_jax.bids import dataset, sidecars
    from srrecnn_jax.images import image_spacing
    from srrecnn_jax.manifest import MANIFEST, history

    model, shipped = dataset.model_name(args.model)
    made = sidecars.made_rows(history(args.work_dir / MANIFEST))
    by_input = {s.path: s for s in sources}
    for job in share:
        row = made.get(os.path.realpath(job.output))
        if row is None:
            continue
        source = by_input[job.input]
        spacing = image_spacing(job.input, "input image")[1]
        sidecars.write_sidecar(sidecars.sidecar_path(job.output),
                               sidecars.sidecar(row, source.relative, source.reference_relative,
                                                spacing, model, __version__,
                                                source.skull_stripped))
    dataset.write_dataset_files(args.output_dir, args.bids_dir, __version__,
                                _command_line(args), [model] if shipped else [],
                                args.work_dir)
    subjects = {str(s.entities["subject"]) for s in sources if s.path in
                {j.input for j in share}}
    _report(args, subjects, index=False)


def _report(args: argparse.Namespace, subjects, index: bool) -> None:
    """Montages of the outputs that lack an up-to-date one, the pages of ``subjects``, and
    with ``index`` the group's table and gains plot."""
    from srrecnn_jax.bids import figures, report
    from srrecnn_jax.manifest import MANIFEST, history

    found = report.entries(history(args.work_dir / MANIFEST), args.output_dir)
    for entry in found:
        if entry.status != "ok" or entry.subject not in subjects:
            continue
        output, png = args.output_dir / entry.output, args.output_dir / entry.figure
        if figures.stale(png, [output, Path(entry.input)]):
            try:
                figures.montage(Path(entry.input), output, entry.facts["SrrecnnScale"], png,
                                entry.facts.get("SrrecnnInterpolationOrder") or 3)
            except SrrecnnError as e:
                entry.status, entry.error = "error", f"montage: {e}"
    report.write_subject_pages(args.output_dir, found, subjects)
    if index:
        made = [e for e in found if e.status == "ok"
                and e.facts.get("SrrecnnSelfCheckGainDb") is not None]
        gains = None
        if made:
            figures.gains([Path(e.output).name.split(".")[0] for e in made],
                          [e.facts["SrrecnnSelfCheckGainDb"] for e in made],
                          [e.facts.get("SrrecnnNoisePercent") for e in made],
                          args.output_dir / report.GAINS)
            gains = report.GAINS
        page = report.write_index(args.output_dir, found, gains)
        if not args.quiet:
            print(f"srrecnn: {len(found)} scans, {sum(e.status != 'ok' for e in found)} "
                  f"failed; {page}", file=sys.stderr)


def group(args: argparse.Namespace) -> int:
    """The report of every output the manifest knows: every subject's page and
    ``index.html`` (failed scans are listed there, and do not fail this level)."""
    from srrecnn_jax.bids.dataset import is_ours
    from srrecnn_jax.manifest import MANIFEST, history

    if not is_ours(args.output_dir):
        raise SrrecnnError(f"OUTPUT_DIR: {args.output_dir} holds no output of srrecnn bids; "
                           "run the participant level first")
    rows = history(args.work_dir / MANIFEST)
    if not rows:
        raise SrrecnnError(f"--work-dir: {args.work_dir} holds no manifest rows")
    from srrecnn_jax.bids.report import entries

    subjects = {e.subject for e in entries(rows, args.output_dir)}
    _report(args, subjects, index=True)
    return 0
