"""Batch super-resolution: many inputs, pipelined, resumable, over devices and hosts.

Work flows through three stages joined by bounded queues, so host memory
stays flat however many volumes there are:

  readers (threads)  read, check, normalise, zoom, resample the reference
  devices (a thread per local device)  the network, in shape buckets or tiles
  writer (thread)    de-normalise, clamp, write atomically, log to the manifest

Across hosts, ``jax.distributed`` (or ``--shard I/N``) gives each process its
index; the job list is sorted and process i takes every n-th job. Each process
appends to its own manifest part, and folds the parts that exist into the
manifest when it ends. The processes of a ``jax.distributed`` batch leave it
once all have started (``start_together``), so that one that dies does not take
the others down; each waits at the end until the others have ended, seen
through lock files in the output folder (``Presence``), and reports those that
ended without finishing their share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from srrecnn_jax import locking, parallel
from srrecnn_jax.checkpoint import fingerprint
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.geometry import header_warnings
from srrecnn_jax.images import image_size, read_input
from srrecnn_jax.inference import SuperResolver, formulation, run_network
from srrecnn_jax.jobs import Job, shard
from srrecnn_jax.manifest import (
    MANIFEST,
    Manifest,
    ManifestError,
    Record,
    history,
    manifest_part,
    manifest_parts,
    merge_manifests,
    new_run_id,
    read_rows,
)
from srrecnn_jax.scales import format_scales, untrained_scale
from srrecnn_jax.writing import stored_bytes, write_image_verified

_DONE = object()


@dataclasses.dataclass
class Options:
    """How to run each job (see ``srrecnn sr --help``)."""

    scale: tuple[float, float, float]
    order: int = 3
    tile: int | None = None
    residual: bool | None = None
    header: str = "consistent"
    precision: str = "fp32"
    interpolation: str = "device"
    exact: bool = False
    bucket: int = 8
    overwrite: bool = False
    readers: int = 2
    prefetch: int = 2


@dataclasses.dataclass
class Summary:
    ok: int = 0  # outputs written (``redone`` of them replaced existing ones)
    redone: int = 0
    skipped: int = 0
    errors: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    device_seconds: float = 0.0
    devices: int = 1
    voxels: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)  # processes that died

    @property
    def utilisation(self) -> float:
        """Fraction of the run's wall time the devices spent running the network."""
        return self.device_seconds / max(self.seconds * self.devices, 1e-9)


def writable_folder(folder: Path) -> None:
    """Create the output folder if needed; raise ``SrrecnnError`` (one line, naming it) if it
    cannot be created or written in (read-only, no permission), before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise SrrecnnError(f"{folder}: cannot write in the output folder "
                           f"({e.strerror or e})") from None


def _staging_dir(out_root: Path) -> Path:
    """This process's staging folder for atomic writes; stale ones of dead runs are removed."""
    host = socket.gethostname()
    writable_folder(out_root)
    for old in out_root.glob(f".tmp-srrecnn-{host}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    staging = out_root / f".tmp-srrecnn-{host}-{os.getpid()}"
    try:
        staging.mkdir(exist_ok=True)
    except OSError as e:
        raise SrrecnnError(f"{out_root}: cannot write in the output folder "
                           f"({e.strerror or e})") from None
    return staging


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- resume: what made an output, and whether an existing one can be kept --------------


def source_facts(path: Path | None) -> dict | None:
    """How a rerun tells that an input (or reference) is still the one an output was made
    from: a file's size and modification time; for a folder (DICOM series), its file
    count and a digest of its files' names, sizes and times. None if it cannot be read."""
    if path is None:
        return None
    try:
        if path.is_dir():
            digest, files = hashlib.sha256(), 0
            for entry in sorted(path.iterdir()):
                info = entry.stat()
                digest.update(os.fsencode(entry.name) + f":{info.st_size}:"
                              f"{info.st_mtime_ns}\n".encode())
                files += 1
            return {"files": files, "digest": digest.hexdigest()}
        info = path.stat()
        return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}
    except OSError:
        return None


def job_facts(job: Job, options: Options, model: str) -> dict:
    """What decides an output's voxels: its input and reference (``source_facts``), the
    model (``checkpoint.fingerprint``), the scale and the options that change the result
    (not ``tile``, ``bucket``, ``readers``: they leave it unchanged). Recorded with each
    output in the manifest; a rerun redoes an output whose facts differ."""
    facts = {"input": source_facts(job.input), "reference": source_facts(job.reference),
             "model": model, "scale": list(options.scale), "order": options.order,
             "residual": options.residual, "header": options.header,
             "precision": options.precision, "interpolation": options.interpolation,
             "exact": options.exact}
    return json.loads(json.dumps(facts))  # as a manifest row reads back (lists, not tuples)


def _shown(value) -> str:
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return ",".join(f"{v:g}" for v in value)
    return "default" if value is None else str(value)


#: Facts of outputs recorded before the fact was: versions before ``exact`` ran every
#: convolution exactly (Winograd F(2, 3) on CPU).
_UNRECORDED = {"exact": True}


def changed_facts(old: dict, new: dict) -> list[str]:
    """What differs between the recorded facts of an output and this run's, in words."""
    changes = []
    for key, value in new.items():
        was = old.get(key, _UNRECORDED.get(key))
        if was == value:
            continue
        if key in ("input", "reference"):
            changes.append(f"the {key} changed since" if was else f"no {key} was recorded")
        elif key == "model":
            changes.append(f"made by another model (sha256 {str(was)[:12]}, now "
                           f"{value[:12]})")
        else:
            changes.append(f"{key} was {_shown(was)}, now {_shown(value)}")
    return changes


def recorded_outputs(rows: Sequence[dict]) -> dict[str, dict]:
    """The latest ``ok`` or ``skipped`` row of each output (by its real path) in manifest
    rows ordered oldest first: what the file there was made from."""
    latest = {}
    for row in rows:
        if row.get("status") in ("ok", "skipped") and row.get("output"):
            latest[os.path.realpath(row["output"])] = row
    return latest


def redo_reason(output: Path, facts: dict, row: dict | None) -> str | None:
    """Why the existing ``output`` cannot be kept, or None: it was made by ``facts``
    (``row``, its latest manifest row, records the same facts) and still reads back as
    written (same bytes on disk, a header with the recorded size)."""
    if row is None or not row.get("job"):
        return "the manifest has no record of how it was made"
    changes = changed_facts(row["job"], facts)
    if changes:
        return "; ".join(changes)
    try:
        size = stored_bytes(output)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if size != row.get("output_bytes"):
        return f"it is {size} bytes, {row.get('output_bytes')} were written (cut short or replaced)"
    try:
        shape = list(image_size(output, "output image"))
    except SrrecnnError:
        return "its header cannot be read"
    if shape != row.get("shape"):
        return f"its header says {_shown(shape)} voxels, {_shown(row.get('shape'))} were written"
    return None


def run_batch(resolver: SuperResolver, jobs: Sequence[Job], options: Options,
              manifest: Manifest, out_root: Path, stop: threading.Event | None = None,
              progress: Callable[[Record, int], None] | None = None,
              warn: Callable[[str], None] | None = None,
              recorded: dict[str, dict] | None = None) -> Summary:
    """Super-resolve every job; never raise for one bad job.

    An existing output is skipped only when ``recorded`` (``recorded_outputs`` of the
    manifest's earlier rows) says it was made from the same input and reference, by
    the same model, scale and options, and it still reads back as written
    (``redo_reason``); otherwise it is redone, with a warning and the reason in its
    row. ``options.overwrite`` redoes every output.

    Args:
      resolver: the loaded model.
      jobs: what to do (this process's share).
      options: scale and how to run.
      manifest: receives one record per job.
      out_root: folder for the staging area of atomic writes.
      stop: when set (Ctrl-C), no new volume starts; queued writes finish.
      progress: called after each job with its record and output voxels.
      warn: receives warnings (header, scale, reference resampling, redone outputs).
      recorded: what made the outputs already there (default: nothing known).
    """
    import jax

    stop = stop or threading.Event()
    warn = warn or (lambda m: print(m, file=sys.stderr))
    summary = Summary(devices=len(jax.local_devices()))
    fatal: list[SrrecnnError] = []  # what stops the run (the manifest cannot be written)
    lock = threading.Lock()

    def halted() -> bool:
        return stop.is_set() or bool(fatal)

    def record(row: Record, voxels: int = 0) -> bool:
        """Log a job's row (never raises: a manifest that fails stops the run)."""
        try:
            manifest.add(row)
        except ManifestError as e:
            with lock:
                fatal.append(e)
            return False
        if progress:
            progress(row, voxels)
        return True

    recorded = recorded or {}
    model = fingerprint(resolver.model)
    todo, planned = [], {}
    for job in jobs:
        facts, redo = job_facts(job, options, model), None
        if job.output.exists():
            row = recorded.get(os.path.realpath(job.output))
            redo = "overwrite" if options.overwrite else redo_reason(job.output, facts, row)
            if redo is None:
                assert row is not None
                if record(Record(str(job.input), str(job.output), "skipped",
                                 str(job.reference) if job.reference else None,
                                 row.get("shape"), row.get("spacing"), job=facts,
                                 output_bytes=row.get("output_bytes"))):
                    summary.skipped += 1
                continue
            if not options.overwrite:
                warn(f"{job.output}: exists, but is made again: {redo}")
        planned[job] = (facts, redo)
        todo.append(job)
    if fatal:
        raise fatal[0]
    scales = resolver.model.trained_scales
    run_notes = []  # on stderr once, and in every job's manifest row
    if untrained_scale(scales, options.scale):
        run_notes.append(f"scale {options.scale} differs from the scale(s) "
                         f"[{format_scales(scales)}] the model was trained for")
        warn(run_notes[-1])

    staging = _staging_dir(out_root)
    jobs_q: queue.Queue = queue.Queue()
    for job in todo:
        jobs_q.put(job)
    ready_q: queue.Queue = queue.Queue(maxsize=options.prefetch)
    done_q: queue.Queue = queue.Queue(maxsize=options.prefetch)
    start = time.perf_counter()

    def fail(job: Job, error: Exception, started: float) -> None:
        message = str(error) if isinstance(error, SrrecnnError) else f"{job.input}: " \
            f"{type(error).__name__}: {error}"
        parameter = error.parameter if isinstance(error, SrrecnnError) else None
        if record(Record(str(job.input), str(job.output), "error",
                         str(job.reference) if job.reference else None,
                         seconds=time.perf_counter() - started, error=message,
                         parameter=parameter)):
            with lock:
                summary.errors += 1

    def read() -> None:
        while not halted():
            try:
                job = jobs_q.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            notes: list[str] = list(run_notes)
            try:
                image = read_input(job.input, "input image")
                notes += header_warnings(image, str(job.input),
                                            resolver.model.trained_spacing, options.scale)
                reference = (read_input(job.reference, "reference image")
                             if job.reference else None)
                prepared = resolver.prepare(image, options.scale, reference, order=options.order,
                                            header=options.header,
                                            interpolation=options.interpolation,
                                            input_name=str(job.input),
                                            reference_name=str(job.reference),
                                            log=notes.append)
            except Exception as e:  # noqa: BLE001 - reported, the batch goes on
                fail(job, e, started)
                continue
            for note in notes[len(run_notes):]:
                warn(note)
            ready_q.put((job, prepared, notes, started))

    def compute(device) -> None:
        params = jax.device_put(resolver.model.params, device)
        while True:
            item = ready_q.get()
            if item is _DONE:
                ready_q.put(_DONE)  # let the other device threads see it too
                break
            if halted():
                continue  # not started: a rerun does it
            job, prepared, notes, started = item
            try:
                tick = time.perf_counter()
                with jax.default_device(device):
                    y = run_network(params, resolver.config, prepared.volume, options.tile,
                                    options.residual, options.bucket, devices=[device],
                                    precision=options.precision,
                                    impl=formulation(options.exact))
                with lock:
                    summary.device_seconds += time.perf_counter() - tick
            except Exception as e:  # noqa: BLE001
                fail(job, e, started)
                continue
            done_q.put((job, prepared, y, notes, started))

    def write() -> None:
        while True:
            item = done_q.get()
            if item is _DONE:
                break
            if fatal:
                continue  # keep taking results, so the device threads never block
            job, prepared, y, notes, started = item
            try:
                image = resolver.finish(prepared, y)
                job.output.parent.mkdir(parents=True, exist_ok=True)
                write_image_verified(image, job.output, staging)
            except Exception as e:  # noqa: BLE001
                fail(job, e, started)
                continue
            voxels = int(np.prod(image.GetSize()))
            facts, redo = planned[job]
            try:
                size = stored_bytes(job.output)
            except OSError:
                size = None  # recorded as unknown: a rerun redoes it
            if record(Record(str(job.input), str(job.output), "ok",
                             str(job.reference) if job.reference else None,
                             list(image.GetSize()), list(image.GetSpacing()),
                             time.perf_counter() - started, warnings=notes, job=facts,
                             output_bytes=size, redone=redo), voxels):
                with lock:
                    summary.ok += 1
                    summary.redone += redo is not None
                    summary.voxels += voxels

    def guarded(body: Callable[[], None], inbox: queue.Queue | None) -> Callable[[], None]:
        """``body``, and if it fails (a bug), stop the run and keep emptying ``inbox`` so
        that no other thread waits for it forever."""
        def target() -> None:
            try:
                body()
            except Exception as e:  # noqa: BLE001 - reported as the run's error
                with lock:
                    fatal.append(SrrecnnError(f"batch run failed: {type(e).__name__}: {e}"))
                if inbox is not None:
                    while inbox.get() is not _DONE:
                        pass
                    inbox.put(_DONE)
        return target

    readers = [threading.Thread(target=guarded(read, None), daemon=True)
               for _ in range(options.readers)]
    devices = [threading.Thread(target=guarded(lambda d=d: compute(d), ready_q), daemon=True)
               for d in jax.local_devices()]
    writer = threading.Thread(target=guarded(write, done_q), daemon=True)
    for thread in readers + devices + [writer]:
        thread.start()
    try:
        for thread in readers:
            thread.join()
        ready_q.put(_DONE)  # each device thread passes it on and stops
        for thread in devices:
            thread.join()
        done_q.put(_DONE)
        writer.join()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if fatal:
        raise fatal[0]
    if stop.is_set():  # say what is left, so the manifest of a stopped run is complete
        finished = {r.input for r in manifest.records}
        for job in todo:
            if str(job.input) not in finished:
                manifest.add(Record(str(job.input), str(job.output), "not-started"))
    summary.interrupted = stop.is_set()
    summary.seconds = time.perf_counter() - start
    return summary


#: The lock file a run holds in its output folder (removed by its last holder).
LOCK = ".srrecnn.lock"


@contextlib.contextmanager
def folder_lock(out_dir: Path, shared: bool = False, note: str = "",
                warn: Callable[[str], None] | None = None) -> Iterator[None]:
    """Own ``out_dir`` for a run: exclusive for one process, shared by the processes of a
    multi-process run. Another run holding it is refused (one line, naming the folder
    and the holder when known) before any work."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locking.hold(out_dir / LOCK, shared=shared, note=note,
                                             warn=warn))
        except locking.LockBusy as e:
            raise SrrecnnError(f"{out_dir}: another srrecnn run is writing to this folder "
                               f"({e.holder or 'lock file ' + LOCK}); wait for it to end or "
                               "choose another output folder") from None
        yield


#: Process I of an N-process run holds this lock file in the output folder while it runs.
PRESENCE = ".srrecnn-process-{process:05d}-of-{count:05d}.lock"


class Presence:
    """How the processes of one ``jax.distributed`` batch see each other in the output
    folder: each holds its lock file (``PRESENCE``) until its share is done; the kernel
    drops the lock of a process that dies, so the others see at once that it ended."""

    def __init__(self, out_dir: Path, process: int, count: int,
                 warn: Callable[[str], None] | None = None):
        self.out_dir, self.process, self.count, self.warn = out_dir, process, count, warn
        self._held = contextlib.ExitStack()

    def path(self, process: int) -> Path:
        return self.out_dir / PRESENCE.format(process=process, count=self.count)

    def enter(self) -> None:
        """Hold this process's lock file; refused if another process holds it."""
        writable_folder(self.out_dir)
        try:
            self._held.enter_context(locking.hold(
                self.path(self.process), note=f"process {self.process} of {self.count}",
                warn=self.warn))
        except locking.LockBusy as e:
            raise SrrecnnError(f"{self.out_dir}: process {self.process} of {self.count} of "
                               f"another run is writing to this folder ({e.holder})") from None

    def leave(self) -> None:
        """Let go of the lock file (again: nothing happens)."""
        self._held.close()

    def wait(self, stop: threading.Event | None = None, poll: float = 0.2) -> list[int]:
        """Wait until every other process has left (or ``stop`` is set); return those whose
        state cannot be seen (a file system without locks), which are not waited for."""
        others, unknown = set(range(self.count)) - {self.process}, []
        while others and not (stop and stop.is_set()):
            for other in sorted(others):
                state = locking.held(self.path(other))
                if state is None:
                    unknown.append(other)
                if not state:
                    others.discard(other)
            if others:
                time.sleep(poll)
        return unknown


def start_together(out_dir: Path, process: int, count: int,
                   warn: Callable[[str], None] | None = None) -> tuple[Presence, str]:
    """Start process ``process`` of a ``jax.distributed`` batch of ``count``: enter its
    ``Presence``, then, once every process has (``parallel.detach``: a barrier), take
    process 0's run id and leave ``jax.distributed``, so that a process that dies later
    does not bring the others down with it. A failure to enter is raised only after the
    barrier, so that the others do not wait for this process there."""
    presence, error = Presence(out_dir, process, count, warn), None
    try:
        presence.enter()
    except SrrecnnError as e:
        error = e
    micros, tag = parallel.detach([time.time_ns() // 1000, secrets.randbits(24)])
    if error is not None:
        presence.leave()
        raise error
    return presence, new_run_id(int(micros), int(tag))


def unfinished(jobs: Sequence[Job], rows: Sequence[dict], run_id: str) -> int:
    """How many of ``jobs`` have no final row (ok, skipped, error) of run ``run_id``."""
    done = {r["input"] for r in rows
            if r.get("run") == run_id and r.get("status") in ("ok", "skipped", "error")}
    return sum(str(job.input) not in done for job in jobs)


def merge(manifest_path: Path) -> list[Path]:
    """Fold every manifest part beside ``manifest_path`` into it (``merge_manifests``);
    safe to repeat, and to run while other processes still write their parts (what they
    add later is folded in by the next merge). Returns the parts merged."""
    parts = manifest_parts(manifest_path)
    if parts:
        merge_manifests(parts, manifest_path)
    return parts


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
    resolver = SuperResolver.load(model, prototxt)
    writable_folder(out_dir)
    with folder_lock(out_dir, shared=count > 1, note=f"process {process} of {count}",
                     warn=warn):
        if count == 1:  # no other process can be running here: tidy up after dead ones
            _remove_dead_presences(out_dir)
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
            summary.missing = _missing(presence, jobs, manifest_path, manifest.run, stop,
                                       warn)
        merge(manifest_path)
    return summary, part


def _remove_dead_presences(out_dir: Path) -> None:
    """Remove the presence lock files that killed processes left (nobody holds them)."""
    for path in out_dir.glob(PRESENCE.replace("{process:05d}", "*").replace("{count:05d}", "*")):
        if locking.held(path) is False:
            with contextlib.suppress(OSError):
                path.unlink()


def _missing(presence: Presence, jobs: Sequence[Job], manifest_path: Path, run_id: str,
             stop: threading.Event | None, warn: Callable[[str], None] | None) -> list[str]:
    """Wait for the other processes of the run; describe those that ended before
    finishing their share."""
    count, missing = presence.count, []
    unknown = presence.wait(stop)
    for other in unknown:
        if warn:
            warn(f"{presence.out_dir}: cannot tell whether process {other} of {count} is "
                 "still running (this file system cannot lock files); not waiting for it")
    if stop is not None and stop.is_set():
        return missing
    for other in range(count):
        if other == presence.process or other in unknown:
            continue
        share = shard(jobs, other, count)
        left = unfinished(share, read_rows(manifest_part(manifest_path, other, count)),
                          run_id)
        if left:
            missing.append(f"process {other} of {count} ended before finishing its share "
                           f"({left} of {len(share)} jobs not done)")
    return missing
