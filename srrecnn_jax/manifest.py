"""The manifest of a batch run: one JSON line per job, per-process parts, their merge."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax import io
from srrecnn_jax.errors import SrrecnnError


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
    warnings: list[str] = dataclasses.field(default_factory=list)
    process: int = 0


class ManifestError(SrrecnnError):
    """The manifest cannot be written (a full disk, a lost file system): the run must stop,
    since a job it cannot record is a job a rerun cannot trust."""


class Manifest:
    """A JSONL file written line by line (flushed), so a killed run still leaves one.

    A write that fails (``OSError``: a full disk) raises ``ManifestError``, and so
    does every later one: the run stops rather than go on unrecorded.
    """

    def __init__(self, path: Path | None, process: int = 0):
        self.path, self.process, self.records = path, process, []
        self._lock = threading.Lock()
        self._file = None
        self._failed: ManifestError | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as e:
                raise self._error(e) from None

    def _error(self, error: OSError) -> ManifestError:
        return ManifestError(f"{self.path}: cannot write the manifest "
                             f"({error.strerror or error}); the run stopped")

    def add(self, record: Record) -> None:
        record.process = self.process
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


def merge_manifests(parts: Sequence[Path], target: Path) -> list[dict]:
    """Concatenate per-process manifest parts into one JSONL file (atomically)."""
    rows = []
    for part in parts:
        if part.exists():
            lines = part.read_text(encoding="utf-8").splitlines()
            rows += [json.loads(line) for line in lines if line.strip()]
    rows.sort(key=lambda r: r["input"])
    io.write_text_atomic(target, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


#: The manifest's name in the output folder unless another is given.
MANIFEST = "srrecnn_manifest.jsonl"


def manifest_part(path: Path, process: int, count: int) -> Path:
    """Where process ``process`` of ``count`` writes its manifest rows (``path`` alone)."""
    return path if count == 1 else path.with_name(
        f"{path.stem}.part-{process:05d}-of-{count:05d}.jsonl")
