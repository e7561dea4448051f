"""Advisory file locks (``flock``) that say who holds them, for folders that one run owns.

A lock is a file. Holding it shared lets the processes of one multi-process run hold it
together; exclusive keeps every other holder out. The last holder removes the file;
a process that opened it just before checks, once locked, that it still holds the file
at that path (else it tries again), so removing it is safe. The kernel drops the lock of
a killed process: there is no stale lock to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError


class LockBusy(SrrecnnError):
    """Somebody else holds the lock; ``holder`` says who, when the lock file tells."""

    def __init__(self, message: str, holder: str = ""):
        super().__init__(message)
        self.holder = holder


def holder_note(note: str = "") -> str:
    """``pid P on HOST`` (and ``note``): the line a holder writes into its lock file."""
    return f"pid {os.getpid()} on {socket.gethostname()}" + (f" ({note})" if note else "")


@contextlib.contextmanager
def hold(path: Path, shared: bool = False, blocking: bool = False, note: str = "",
         warn: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock ``path`` for the ``with`` block.

    Raises ``LockBusy`` (non-blocking) when another process holds it in a conflicting
    mode, ``SrrecnnError`` when the lock file cannot be created (a read-only folder).
    A file system without ``flock`` support gives a warning and no lock.
    """
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    fd = _lock(path, mode, warn)
    if fd is None:
        yield
        return
    try:
        if not shared:
            os.ftruncate(fd, 0)
        os.write(fd, (holder_note(note) + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass  # who holds it is only information
    try:
        yield
    finally:
        try:  # the last holder removes the file
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def held(path: Path) -> bool | None:
    """Whether another process holds the lock ``path`` now (a missing file is not held);
    None when this file system cannot tell (no ``flock``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a holder's exclusive lock
    except BlockingIOError:                          # refuses it
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # drops our lock, if we took it
    return False


def _lock(path: Path, mode: int, warn: Callable[[str], None] | None) -> int | None:
    """An open descriptor of the lock file ``path``, locked in ``mode``; None when the file
    system cannot lock."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise SrrecnnError(f"{path.parent}: cannot write in this folder "
                               f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockBusy(f"{path}: held by {holder or 'another process'}", holder) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise SrrecnnError(f"{path}: cannot lock ({e.strerror or e})") from None
            if warn:
                warn(f"{path}: this file system cannot lock files ({e.strerror}); "
                     "runs into the same folder at the same time are not detected")
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd  # still the file at that path: ours
        except FileNotFoundError:
            pass
        os.close(fd)  # its last holder removed it meanwhile: lock the new one


def _read(fd: int) -> str:
    """The holders named in a lock file, on one line."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return ""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
