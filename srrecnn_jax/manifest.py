"""The manifest of a batch run: one JSON line per job, per-process parts, their merge."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax import io


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


class Manifest:
    """A JSONL file written line by line (flushed), so a killed run still leaves one."""

    def __init__(self, path: Path | None, process: int = 0):
        self.path, self.process, self.records = path, process, []
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def add(self, record: Record) -> None:
        record.process = self.process
        with self._lock:
            self.records.append(record)
            if self._file:
                self._file.write(json.dumps(dataclasses.asdict(record)) + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()


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
