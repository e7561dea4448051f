"""The processes of a batch and its output folder: the folder's lock, each process's
presence and staging folder, the start of a ``jax.distributed`` batch, and the manifest
parts folded together at the end.

The processes of a ``jax.distributed`` batch leave it once all have started
(``start_together``), so that one that dies does not take the others down; each waits
at the end until the others have ended, seen through lock files in the output folder
(``Presence``), and reports those that ended without finishing their share
(``missing_processes``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from srrecnn_jax import locking, parallel
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import writable_folder
from srrecnn_jax.jobs import Job, shard
from srrecnn_jax.manifest import (
    check_manifest_file,
    manifest_part,
    manifest_parts,
    merge_manifests,
    new_run_id,
    read_rows,
)


def staging_dir(out_root: Path) -> Path:
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


#: The lock file a run holds in its output folder (removed by its last holder).
LOCK = ".srrecnn.lock"


#: Share I of an N-share run holds this lock file, exclusively, for the whole run.
SHARE_LOCK = ".srrecnn-share-{process:05d}-of-{count:05d}.lock"


@contextlib.contextmanager
def folder_lock(out_dir: Path, shared: bool = False, note: str = "",
                warn: Callable[[str], None] | None = None,
                share: tuple[int, int] | None = None) -> Iterator[None]:
    """Own ``out_dir`` for a run: exclusive for one process, shared by the processes of a
    multi-process run; ``share`` ``(I, N)``: and share I of N alone, so that two runs of
    the same share (two ``I/N`` array tasks started twice) never write the same outputs.
    Another run holding either is refused (one line, naming the folder and the holder
    when known) before any work."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locking.hold(out_dir / LOCK, shared=shared, note=note,
                                             warn=warn))
        except locking.LockBusy as e:
            raise SrrecnnError(f"{out_dir}: another srrecnn run is writing to this folder "
                               f"({e.holder or 'lock file ' + LOCK}); wait for it to end or "
                               "choose another output folder") from None
        if share is not None:
            name = SHARE_LOCK.format(process=share[0], count=share[1])
            try:
                stack.enter_context(locking.hold(out_dir / name, note=note, warn=warn))
            except locking.LockBusy as e:
                raise SrrecnnError(f"{out_dir}: another srrecnn run is doing share "
                                   f"{share[0]} of {share[1]} in this folder "
                                   f"({e.holder or 'lock file ' + name}); wait for it to end"
                                   ) from None
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
    check_manifest_file(manifest_path)
    parts = manifest_parts(manifest_path)
    if parts:
        merge_manifests(parts, manifest_path)
    return parts


def remove_dead_presences(out_dir: Path) -> None:
    """Remove the presence and share lock files that killed processes left (nobody holds
    them)."""
    patterns = [name.replace("{process:05d}", "*").replace("{count:05d}", "*")
                for name in (PRESENCE, SHARE_LOCK)]
    for path in (p for pattern in patterns for p in out_dir.glob(pattern)):
        if locking.held(path) is False:
            with contextlib.suppress(OSError):
                path.unlink()


def missing_processes(presence: Presence, jobs: Sequence[Job], manifest_path: Path,
                      run_id: str, stop: threading.Event | None,
                      warn: Callable[[str], None] | None) -> list[str]:
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
