"""The manifest of batch runs: one JSON line per job, appended run after run (each row
names its run and time), per-process parts, and their merge."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax import locking
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.structured import parse_json
from srrecnn_jax.writing import write_text_atomic


@dataclasses.dataclass
class Record:
    """One manifest line."""

    input: str
    output: str
    status: str  # ok | skipped | error | not-started (the run was stopped first)
    reference: str | None = None
    shape: list[int] | None = None
    spacing: list[float] | None = None
    seconds: float | None = None
    error: str | None = None
    parameter: str | None = None  # the library parameter ``error`` names, if any
    warnings: list[str] = dataclasses.field(default_factory=list)
    process: int = 0
    run: str | None = None  # the run's id (``new_run_id``), set by ``Manifest.add``
    time: str | None = None  # when the row was written (UTC, ISO 8601), set by ``add``
    job: dict | None = None  # what made the output (ok, skipped): see ``batch.resume.job_facts``
    output_bytes: int | None = None  # the output's size on disk when written (ok, skipped)
    redone: str | None = None  # why an existing output was made again
    noise_percent: float | None = None  # the input's noise, % of its max (guardrails)
    falloff: float | None = None  # with --check: the input's spectral fall-off (guardrails)
    self_check_psf: str | None = None  # with --check: the self-check's acquisition
    self_check_gain_db: float | None = None  # with --check: predicted gain over spline
    scale: list[float] | None = None  # (ok, skipped) the (x, y, z) factors used: the
    # run's scale, or with isotropic the input's own
    adapt: dict | None = None  # (ok, skipped) with adapt: fine-tuning's facts
    # (``adapt.AdaptResult.facts``: seconds, steps, heldout_psnr, kept, fwhm_voxels)


def new_run_id(micros: int | None = None, tag: int | None = None) -> str:
    """A run's id: its UTC start time to the microsecond and a random tag, e.g.
    ``20260102T030405.123456Z-1a2b3c``; ids sort by start time."""
    micros = time.time_ns() // 1000 if micros is None else micros
    tag = secrets.randbits(24) if tag is None else tag
    start = datetime.datetime.fromtimestamp(micros / 1e6, datetime.UTC)
    return f"{start:%Y%m%dT%H%M%S.%fZ}-{tag % (1 << 24):06x}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


class ManifestError(SrrecnnError):
    """The manifest cannot be written (a full disk, a lost file system): the run must stop,
    since a job it cannot record is a job a rerun cannot trust."""


class Manifest:
    """A JSONL file that a run appends to line by line (flushed), so a killed run still
    leaves its rows, and the rows of earlier runs are kept. Each row is stamped with
    ``process``, the ``run`` id and its ``time``.

    A write that fails (``OSError``: a full disk) raises ``ManifestError``, and so
    does every later one: the run stops rather than go on unrecorded.
    """

    def __init__(self, path: Path | None, process: int = 0, run: str | None = None):
        self.path, self.process, self.records = path, process, []
        self.run = run or new_run_id()
        self._lock = threading.Lock()
        self._file = None
        self._failed: ManifestError | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
                self._end_last_line()
            except OSError as e:
                raise self._error(e) from None

    def _end_last_line(self) -> None:
        """Start on a fresh line when an earlier run was killed in the middle of one, so
        that its fragment does not swallow this run's first row."""
        assert self._file is not None and self.path is not None
        if not self.path.is_file() or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                self._file.write("\n")
                self._file.flush()

    def _error(self, error: OSError) -> ManifestError:
        return ManifestError(f"{self.path}: cannot write the manifest "
                             f"({error.strerror or error}); the run stopped")

    def add(self, record: Record) -> None:
        record.process, record.run, record.time = self.process, self.run, _now()
        with self._lock:
            if self._failed:
                raise self._failed
            self.records.append(record)
            if self._file:
                try:
                    self._file.write(json.dumps(dataclasses.asdict(record)) + "\n")
                    self._file.flush()
                except OSError as e:
                    self._failed = self._error(e)
                    raise self._failed from None

    def close(self) -> None:
        """Close the file; raise ``ManifestError`` if its last lines could not be written
        (unless a write already failed and was reported)."""
        if self._file:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as e:
                if not self._failed:
                    raise self._error(e) from None


def read_rows(path: Path) -> list[dict]:
    """The rows of a manifest file or part, in file order; none if it does not exist.
    A line that is not a JSON object (the fragment a killed run left) is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot read the manifest ({e.strerror or e})",
                           "manifest") from None
    rows = []
    for line in text.splitlines():
        try:
            row = parse_json(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def manifest_part(path: Path, process: int, count: int) -> Path:
    """Where process ``process`` of ``count`` writes its manifest rows (``path`` alone)."""
    return path if count == 1 else path.with_name(
        f"{path.stem}.part-{process:05d}-of-{count:05d}.jsonl")


def manifest_parts(path: Path) -> list[Path]:
    """The parts of the manifest ``path`` that exist beside it, of any process count."""
    return sorted(path.parent.glob(f"{path.stem}.part-*-of-*.jsonl"))


#: How much of an existing manifest ``check_manifest_file`` reads to recognise it.
RECOGNISE_BYTES = 1 << 16


def check_manifest_file(path: Path) -> None:
    """Refuse a manifest path that holds something else: a run appends to its manifest
    and a merge rewrites it, so a scan or any other file at that path would be spoiled.
    Ours is an empty file or JSON lines among whose first ones a row (an object with
    ``input`` and ``status``) is found; a folder, a device, a binary file or text of
    another kind is refused before any work, naming the file."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise SrrecnnError(f"{path}: exists and is not a file; a manifest is a JSON-lines "
                           "file", "manifest")
    try:
        with open(path, "rb") as f:
            head = f.read(RECOGNISE_BYTES)
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot read the manifest ({e.strerror or e})",
                           "manifest") from None
    if not head.strip():
        return
    rows = []
    if b"\0" not in head:
        for line in head.decode("utf-8", "replace").splitlines():
            try:
                rows.append(parse_json(line))
            except ValueError:
                continue
    if not any(isinstance(r, dict) and {"input", "status"} <= r.keys() for r in rows):
        raise SrrecnnError(f"{path}: exists and is not a manifest of srrecnn (no row of one "
                           "in its first lines); it is never appended to or rewritten",
                           "manifest")


def history(path: Path) -> list[dict]:
    """Every row the manifest ``path`` and its parts hold, oldest first (by time)."""
    rows = read_rows(path)
    for part in manifest_parts(path):
        rows += read_rows(part)
    return sorted(rows, key=lambda r: str(r.get("time") or ""))


def merge_manifests(parts: Sequence[Path], target: Path) -> list[dict]:
    """Fold manifest parts into ``target``, keeping every row it already holds (earlier
    runs); a row that is there already is not added again, so merging twice changes
    nothing. Rows are ordered by run, then input. Written atomically, one merge at a
    time (a lock beside ``target``); the parts are left as they are. Returns the rows."""
    with locking.hold(target.with_name(f".{target.name}.lock"), blocking=True):
        rows, seen = [], set()
        for source in [target, *parts]:
            for row in read_rows(source):
                key = json.dumps(row, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        rows.sort(key=lambda r: (str(r.get("run") or ""), str(r.get("input", ""))))
        write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


#: The manifest's name in the output folder unless another is given.
MANIFEST = "srrecnn_manifest.jsonl"
