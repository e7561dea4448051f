"""``srrecnn sr --out-dir``: plan the jobs, show progress, handle signals, summarise."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time

from srrecnn_jax import distributed
from srrecnn_jax.batch import (
    Manifest,
    Options,
    Record,
    collect_inputs,
    merge_manifests,
    plan_jobs,
    run_batch,
    shard,
)
from srrecnn_jax.errors import SrrecnnError


def run_batch_command(args: argparse.Namespace) -> int:
    """Run batch mode; exit status 0, 1 if any job failed, 130 if interrupted."""
    process, count = 0, 1
    if args.distributed:
        process, count = distributed.initialize(args.coordinator, args.num_processes,
                                                args.process_id)
    elif args.coordinator or args.num_processes or args.process_id is not None:
        raise SrrecnnError("--coordinator/--num-processes/--process-id: need --distributed")
    out_dir = args.out_dir
    inside_out = out_dir.resolve()
    inputs = collect_inputs(args.inputs, args.glob,
                            exclude=lambda p: inside_out in p.resolve().parents)
    if not inputs:
        raise SrrecnnError(f"{' '.join(map(str, args.inputs))}: no input images found "
                           f"(--glob {args.glob!r})")
    jobs = shard(plan_jobs(inputs, out_dir, args.suffix, args.output_template,
                           args.reference_pattern), process, count)
    if args.dry_run:
        for job in jobs:
            ref = f"  [reference {job.reference}]" if job.reference else ""
            print(f"{job.input} -> {job.output}{ref}")
        return 0

    from tqdm import tqdm

    from srrecnn_jax.inference import SuperResolver

    resolver = SuperResolver.load(args.model, args.prototxt)
    options = Options(scale=args.scale, order=args.order, tile=args.tile,
                      residual=False if args.no_residual else None, header=args.header,
                      precision=args.precision, interpolation=args.interpolation,
                      bucket=args.bucket, overwrite=args.force,
                      readers=args.workers)
    manifest_path = args.manifest or out_dir / "srrecnn_manifest.jsonl"
    part = manifest_path if count == 1 else manifest_path.with_name(
        f"{manifest_path.stem}.part-{process:05d}-of-{count:05d}.jsonl")
    manifest = Manifest(part, process)

    stop = threading.Event()

    def on_signal(signum, frame):
        if not stop.is_set():
            print("srrecnn: stopping after the volumes in flight are written", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=len(jobs), unit="vol", disable=args.quiet, file=sys.stderr,
               dynamic_ncols=True)
    start, done_voxels = time.perf_counter(), [0]

    def progress(record: Record, voxels: int) -> None:
        if record.status == "error":
            bar.write(f"srrecnn: error: {record.error}", file=sys.stderr)
        done_voxels[0] += voxels
        bar.set_postfix_str(f"{done_voxels[0] / (time.perf_counter() - start):.3g} voxels/s")
        bar.update(1)

    def warn(message: str) -> None:
        if not args.quiet:
            bar.write(f"srrecnn: warning: {message}", file=sys.stderr)

    try:
        summary = run_batch(resolver, jobs, options, manifest, out_dir, stop,
                            progress=progress, warn=warn)
    finally:
        bar.close()
        manifest.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if count > 1:
        distributed.barrier("srrecnn-batch-done")
        if process == 0:
            merge_manifests(sorted(part.parent.glob(  # this run's parts only
                f"{manifest_path.stem}.part-*-of-{count:05d}.jsonl")), manifest_path)
    rate = summary.voxels / summary.seconds if summary.seconds else 0.0
    if not args.quiet:
        print(f"srrecnn: {summary.ok} written, {summary.skipped} skipped (complete), "
              f"{summary.errors} failed in {summary.seconds:.1f} s; {rate:.3g} voxels/s; "
              f"device busy {summary.utilisation:.0%}; manifest {part}", file=sys.stderr)
    if args.json:
        facts = dataclasses.asdict(summary) | {"utilisation": summary.utilisation,
                                               "voxels_per_s": rate, "manifest": str(part),
                                               "process": process, "processes": count}
        print(json.dumps(facts))
    if summary.interrupted:
        return 130
    return 1 if summary.errors else 0



