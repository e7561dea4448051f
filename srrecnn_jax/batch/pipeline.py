"""One process's share of a batch, pipelined: three stages joined by bounded queues, so
host memory stays flat however many volumes there are.

  readers (threads)  read, check, normalise, zoom, resample the reference
  devices (a thread per local device)  the network, in shape buckets or tiles
  writer (thread)    de-normalise, clamp, write atomically, log to the manifest
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from srrecnn_jax.adapt import AdaptSettings, adapt, check_adaptable, slice_fwhm
from srrecnn_jax.batch.options import Options
from srrecnn_jax.batch.processes import staging_dir
from srrecnn_jax.batch.resume import job_facts, redo_reason
from srrecnn_jax.checkpoint import fingerprint
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.geometry import header_warnings
from srrecnn_jax.guardrails import check_scan, losing_note, noise_percent
from srrecnn_jax.images import read_input, to_array
from srrecnn_jax.inference import (
    Prepared,
    SuperResolver,
    clipped_note,
    conv_algorithm,
    run_network,
)
from srrecnn_jax.jobs import Job
from srrecnn_jax.manifest import Manifest, ManifestError, Record
from srrecnn_jax.scales import Scale, untrained_scale_note
from srrecnn_jax.writing import stored_bytes, write_image_verified

_DONE = object()


@dataclasses.dataclass
class _Work:
    """One job on its way through the stages: its factors and notes (reader), the network
    input and the input's checks (reader), with ``Options.adapt`` the input array and
    slice profile fine-tuning needs (reader; dropped once used) and fine-tuning's facts
    (device), and the network output (device)."""

    job: Job
    started: float
    factors: Scale
    notes: list[str]
    prepared: Prepared
    checks: dict
    lr: np.ndarray | None = None
    fwhm: float | None = None
    adapted: dict | None = None
    y: np.ndarray | None = None


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
        """Fraction of the run's wall time the devices spent running the network (and
        fine-tuning, with ``Options.adapt``)."""
        return self.device_seconds / max(self.seconds * self.devices, 1e-9)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def _naming(job: Job) -> Iterator[None]:
    """Re-raise a ``SrrecnnError`` about a job's settings (its factors, its fine-tuning),
    which does not name a file, as one that names the job's input."""
    try:
        yield
    except SrrecnnError as e:
        if str(job.input) in e.message:
            raise
        raise SrrecnnError(f"{job.input}: {e.message}", e.parameter) from None


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

    A job whose factors cannot be found (``Options.isotropic``: an ambiguous geometry) or
    whose scan cannot be fine-tuned on (``Options.adapt``) is one error row. With
    ``Options.adapt``, a model that cannot be fine-tuned (``adapt.check_adaptable``) is
    refused before any job.

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
    if options.adapt is not None:
        check_adaptable(resolver.model)
    run = _Run(resolver, options, manifest, stop or threading.Event(), progress,
               warn or _stderr)
    todo = run.triage(jobs, recorded or {})
    run.raise_fatal()
    run.note_untrained_scale()
    staging = staging_dir(out_root)
    start = time.perf_counter()
    try:
        run.flow(todo, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    run.raise_fatal()
    if run.stop.is_set():  # say what is left, so the manifest of a stopped run is complete
        finished = {r.input for r in manifest.records}
        for job in todo:
            if str(job.input) not in finished:
                manifest.add(Record(str(job.input), str(job.output), "not-started"))
    run.summary.interrupted = run.stop.is_set()
    run.summary.seconds = time.perf_counter() - start
    return run.summary


class _Run:
    """What the stages of one ``run_batch`` share: the jobs' queues, the summary, and
    the first error that stops the run (``fatal``: the manifest cannot be written)."""

    def __init__(self, resolver: SuperResolver, options: Options, manifest: Manifest,
                 stop: threading.Event, progress: Callable[[Record, int], None] | None,
                 warn: Callable[[str], None]):
        self.resolver, self.options, self.manifest = resolver, options, manifest
        self.stop, self.progress, self.warn = stop, progress, warn
        self.summary = Summary(devices=len(jax.local_devices()))
        self.fatal: list[SrrecnnError] = []
        self.lock = threading.Lock()
        self.planned: dict[Job, tuple[dict, str | None]] = {}  # facts, why redone
        self.run_notes: list[str] = []  # on stderr once, and in every job's manifest row
        self.staging: Path | None = None
        self.jobs_q: queue.Queue = queue.Queue()
        self.ready_q: queue.Queue = queue.Queue(maxsize=options.prefetch)
        self.done_q: queue.Queue = queue.Queue(maxsize=options.prefetch)

    def halted(self) -> bool:
        return self.stop.is_set() or bool(self.fatal)

    def raise_fatal(self) -> None:
        if self.fatal:
            raise self.fatal[0]

    def record(self, row: Record, voxels: int = 0) -> bool:
        """Log a job's row (never raises: a manifest that fails stops the run)."""
        try:
            self.manifest.add(row)
        except ManifestError as e:
            with self.lock:
                self.fatal.append(e)
            return False
        if self.progress:
            self.progress(row, voxels)
        return True

    def fail(self, job: Job, error: Exception, started: float) -> None:
        message = str(error) if isinstance(error, SrrecnnError) else f"{job.input}: " \
            f"{type(error).__name__}: {error}"
        parameter = error.parameter if isinstance(error, SrrecnnError) else None
        if self.record(Record(str(job.input), str(job.output), "error",
                              str(job.reference) if job.reference else None,
                              seconds=time.perf_counter() - started, error=message,
                              parameter=parameter)):
            with self.lock:
                self.summary.errors += 1

    def triage(self, jobs: Sequence[Job], recorded: dict[str, dict]) -> list[Job]:
        """The jobs to run; an existing output that can be kept is logged as skipped, and
        one that is made again is warned about with the reason (``redo_reason``)."""
        model, overwrite, todo = fingerprint(self.resolver.model), self.options.overwrite, []
        for job in jobs:
            facts = job_facts(job, self.options.inference, model,
                              **self.options.resume_facts())
            redo = None
            if job.output.exists():
                row = recorded.get(os.path.realpath(job.output))
                redo = "overwrite" if overwrite else redo_reason(job.output, facts, row)
                if redo is None:
                    assert row is not None
                    if self.record(Record(str(job.input), str(job.output), "skipped",
                                          str(job.reference) if job.reference else None,
                                          row.get("shape"), row.get("spacing"), job=facts,
                                          output_bytes=row.get("output_bytes"),
                                          scale=row.get("scale"), adapt=row.get("adapt"))):
                        self.summary.skipped += 1
                    continue
                if not overwrite:
                    self.warn(f"{job.output}: exists, but is made again: {redo}")
            self.planned[job] = (facts, redo)
            todo.append(job)
        return todo

    def note_untrained_scale(self) -> None:
        """The run's scale, if the model was not trained for it, said once (with
        ``isotropic``, each job's own: ``prepare``)."""
        if self.options.isotropic:
            return
        note = untrained_scale_note(self.resolver.model.trained_scales,
                                    self.options.inference.scale)
        if note:
            self.run_notes.append(note)
            self.warn(note)

    def flow(self, todo: Sequence[Job], staging: Path) -> None:
        """Run the stages' threads over ``todo`` until every job is done or stopped."""
        self.staging = staging
        for job in todo:
            self.jobs_q.put(job)
        readers = [threading.Thread(target=self.guarded(self.read, None), daemon=True)
                   for _ in range(self.options.readers)]
        devices = [threading.Thread(target=self.guarded(lambda d=d: self.compute(d),
                                                        self.ready_q), daemon=True)
                   for d in jax.local_devices()]
        writer = threading.Thread(target=self.guarded(self.write, self.done_q), daemon=True)
        for thread in readers + devices + [writer]:
            thread.start()
        for thread in readers:
            thread.join()
        self.ready_q.put(_DONE)  # each device thread passes it on and stops
        for thread in devices:
            thread.join()
        self.done_q.put(_DONE)
        writer.join()

    def guarded(self, body: Callable[[], None], inbox: queue.Queue | None
                ) -> Callable[[], None]:
        """``body``, and if it fails (a bug), stop the run and keep emptying ``inbox`` so
        that no other thread waits for it forever."""
        def target() -> None:
            try:
                body()
            except Exception as e:  # noqa: BLE001 - reported as the run's error
                with self.lock:
                    self.fatal.append(SrrecnnError(f"batch run failed: {type(e).__name__}: "
                                                   f"{e}"))
                if inbox is not None:
                    while inbox.get() is not _DONE:
                        pass
                    inbox.put(_DONE)
        return target

    def read(self) -> None:
        """Reader stage: read, check and prepare jobs until none is left or the run stops."""
        while not self.halted():
            try:
                job = self.jobs_q.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            try:
                work = self.prepare(job, started)
            except Exception as e:  # noqa: BLE001 - reported, the batch goes on
                self.fail(job, e, started)
                continue
            for note in work.notes[len(self.run_notes):]:
                self.warn(note)
            self.ready_q.put(work)

    def prepare(self, job: Job, started: float) -> _Work:
        """One job's reader work: its factors (``Options.factors``), the warnings about
        them and its header, the network input, the input's checks, and with
        ``Options.adapt`` the slice profile (a scan without one thick axis is refused
        here) and the input array to fine-tune on."""
        model = self.resolver.model
        image = read_input(job.input, "input image")
        with _naming(job):
            factors = self.options.factors(image)
            fwhm = None
            if self.options.adapt is not None:
                fwhm = slice_fwhm(image.GetSpacing(), factors, self.options.slice_thickness)
        options = dataclasses.replace(self.options.inference, scale=factors)
        notes: list[str] = list(self.run_notes)
        if self.options.isotropic:
            note = untrained_scale_note(model.trained_scales, factors)
            if note:
                notes.append(f"{job.input}: {note}")
        notes += header_warnings(image, str(job.input), model.trained_spacing, factors)
        reference = read_input(job.reference, "reference image") if job.reference else None
        prepared = self.resolver.prepare(image, options, reference, input_name=str(job.input),
                                         reference_name=str(job.reference), log=notes.append)
        lr = to_array(image)
        checks = self.checks(lr, factors)
        losing = losing_note(checks)
        if losing:
            notes.append(f"{job.input}: {losing}")
        return _Work(job, started, factors, notes, prepared, checks,
                     lr if fwhm is not None else None, fwhm)

    def checks(self, lr, factors: Scale) -> dict:
        """The input's noise estimate, and with ``Options.check`` the self-check at the
        job's ``factors``."""
        if not self.options.check:
            return {"noise_percent": round(noise_percent(lr), 3)}
        inference = self.options.inference
        return check_scan(self.resolver.model.params, self.resolver.config, lr, factors,
                          inference.precision, inference.acquisition, inference.consistency)

    def compute(self, device) -> None:
        """Device stage: for each prepared volume, with ``Options.adapt`` fine-tuning on
        its scan first (``adapted``), then the network on ``device``."""
        resolver, inference = self.resolver, self.options.inference
        params = jax.device_put(resolver.model.params, device)
        while True:
            work = self.ready_q.get()
            if work is _DONE:
                self.ready_q.put(_DONE)  # let the other device threads see it too
                break
            if self.halted():
                continue  # not started: a rerun does it
            try:
                tick = time.perf_counter()
                with jax.default_device(device):
                    used = (params if self.options.adapt is None
                            else self.adapted(work, device, params))
                    if self.halted():
                        continue  # stopped while fine-tuning: a rerun does it
                    work.y = run_network(used, resolver.config, work.prepared.volume,
                                         inference.tile, inference.residual,
                                         self.options.bucket, devices=[device],
                                         precision=inference.precision,
                                         algorithm=conv_algorithm(inference.exact))
                with self.lock:
                    self.summary.device_seconds += time.perf_counter() - tick
            except Exception as e:  # noqa: BLE001
                self.fail(work.job, e, work.started)
                continue
            self.done_q.put(work)

    def adapted(self, work: _Work, device, params):
        """Fine-tune the model on the job's own scan (``adapt.adapt``, within the
        ``Options.adapt`` budget), its facts into ``work.adapted``; the parameters to run
        the job with, on ``device``: the adapted ones if the held-out check kept them,
        else ``params`` (the model's)."""
        inference = self.options.inference
        lr, work.lr = work.lr, None
        with _naming(work.job):
            result = adapt(self.resolver.model, lr, work.factors, work.fwhm,
                           AdaptSettings(seconds=self.options.adapt), order=inference.order,
                           interpolation=inference.interpolation,
                           residual=inference.residual, stop=self.halted)
        work.adapted = result.facts()
        return jax.device_put(result.model.params, device) if result.kept else params

    def write(self) -> None:
        """Writer stage: finish, write and log each network output."""
        while True:
            work = self.done_q.get()
            if work is _DONE:
                break
            if self.fatal:
                continue  # keep taking results, so the device threads never block
            try:
                image = self.resolver.finish(work.prepared, work.y)
                note = clipped_note(work.prepared)
                if note:
                    work.notes = work.notes + [note]
                    self.warn(note)
                work.job.output.parent.mkdir(parents=True, exist_ok=True)
                write_image_verified(image, work.job.output, self.staging)
            except Exception as e:  # noqa: BLE001
                self.fail(work.job, e, work.started)
                continue
            self.written(work, image)

    def written(self, work: _Work, image) -> None:
        """Log a written output's row with what made it (the facts, the factors, with
        ``Options.adapt`` fine-tuning's facts) and the input's checks, and count it."""
        job = work.job
        voxels = int(np.prod(image.GetSize()))
        facts, redo = self.planned[job]
        try:
            size = stored_bytes(job.output)
        except OSError:
            size = None  # recorded as unknown: a rerun redoes it
        if self.record(Record(str(job.input), str(job.output), "ok",
                              str(job.reference) if job.reference else None,
                              list(image.GetSize()), list(image.GetSpacing()),
                              time.perf_counter() - work.started, warnings=work.notes,
                              job=facts, output_bytes=size, redone=redo,
                              scale=list(work.factors), adapt=work.adapted, **work.checks),
                       voxels):
            with self.lock:
                self.summary.ok += 1
                self.summary.redone += redo is not None
                self.summary.voxels += voxels
