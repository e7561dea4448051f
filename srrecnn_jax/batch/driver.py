"""A batch run of one process: load the model, hold the output folder, run this
process's share (``pipeline.run_batch``) into its manifest part, fold the parts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from srrecnn_jax.batch.options import Options
from srrecnn_jax.batch.pipeline import Summary, run_batch
from srrecnn_jax.batch.processes import (
    Presence,
    folder_lock,
    merge,
    missing_processes,
    remove_dead_presences,
)
from srrecnn_jax.batch.resume import recorded_outputs
from srrecnn_jax.files import writable_folder
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.jobs import Job, shard
from srrecnn_jax.manifest import (
    MANIFEST,
    Manifest,
    Record,
    check_manifest_file,
    history,
    manifest_part,
)


def run(jobs: Sequence[Job], model: Path, options: Options, out_dir: Path,
        prototxt: Path | None = None, manifest_path: Path | None = None,
        process: int = 0, count: int = 1, stop: threading.Event | None = None,
        progress: Callable[[Record, int], None] | None = None,
        warn: Callable[[str], None] | None = None,
        run_id: str | None = None, presence: Presence | None = None) -> tuple[Summary, Path]:
    """Load the model and run this process's share of ``jobs`` (``jobs.shard``: every
    ``count``-th from ``process``; see ``run_batch``) holding the output folder's lock
    (``folder_lock``).

    The run appends its rows, stamped with ``run_id`` (default: a new one), to the
    manifest ``manifest_path`` (default ``out_dir/MANIFEST``), or with ``count``
    processes to this process's part of it; rows of earlier runs are kept. At the end
    the parts that exist are folded into the manifest (``merge``), whatever the
    process count they came from.

    With ``presence`` (a ``jax.distributed`` batch, see ``start_together``; its caller
    leaves it on any way out), the process leaves its presence when its share is done,
    waits until every other process has left too, and lists in ``Summary.missing``
    those that left without finishing their share (they died or failed): a rerun does
    their jobs. Without it (``--shard``
    style: independent processes), nothing is waited for.

    Returns the summary and this process's manifest file.
    """
    share = shard(jobs, process, count)
    manifest_path = manifest_path or out_dir / MANIFEST
    part = manifest_part(manifest_path, process, count)
    for path in {manifest_path, part}:
        check_manifest_file(path)
    resolver = SuperResolver.load(model, prototxt)
    writable_folder(out_dir)
    with folder_lock(out_dir, shared=count > 1, note=f"process {process} of {count}",
                     warn=warn, share=(process, count) if count > 1 else None):
        if count == 1:  # no other process can be running here: tidy up after dead ones
            remove_dead_presences(out_dir)
        recorded = recorded_outputs(history(manifest_path))
        manifest = Manifest(part, process, run_id)
        try:
            summary = run_batch(resolver, share, options, manifest, out_dir, stop,
                                progress=progress, warn=warn, recorded=recorded)
        finally:
            manifest.close()
            if presence is not None:
                presence.leave()
        if presence is not None:
            summary.missing = missing_processes(presence, jobs, manifest_path, manifest.run,
                                                stop, warn)
        merge(manifest_path)
    return summary, part
