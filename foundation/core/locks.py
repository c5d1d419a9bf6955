"""Exclusive locks held for a whole command, so two processes never share a run directory.

:func:`hold` takes an advisory lock (``flock``, through :mod:`filelock`) on a lock file *next to* the
directory it guards (``runs/.NAME.lock`` for ``runs/NAME``): a refused command therefore creates nothing
inside the directory.  The holder writes its process id, host and command line into the lock file, and a
second process that finds the lock taken stops at once with :class:`~foundation.core.errors.BusyError`
naming that holder.  The operating system releases the lock when its process ends, however it ends
(SIGKILL included), so a crashed run never leaves a stale lock behind; the empty lock file stays (removing
it would race with the next taker).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from foundation.core.errors import BusyError, write_error

__all__ = ["lock_path", "hold"]


def lock_path(directory: str | Path) -> Path:
    """The lock file guarding ``directory``: ``PARENT/.NAME.lock``."""
    directory = Path(directory).absolute()
    return directory.parent / f".{directory.name}.lock"


def _describe_self() -> str:
    command = " ".join(sys.argv) or sys.executable
    return f"process {os.getpid()} on {socket.gethostname()} ({command})"


def _record_holder(fd: int) -> None:
    """Write who holds the lock into the lock file (read by the processes it refuses)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, _describe_self().encode("utf-8", "replace"), 0)


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
    except OSError:
        return "another process"


def hold(directory: str | Path, *, what: str, wait: bool = False) -> FileLock:
    """Take the exclusive lock of ``directory`` and return it (call ``.release()`` when done).

    ``what`` names the directory in messages (``"run directory"``).  ``wait``: when the lock is taken,
    say so on stderr (naming the holder) and wait for it instead of raising.

    Raises:
        BusyError: another process holds the lock; the message names the directory, the lock file and
            the holder (process id, host, command line).
    """
    path = lock_path(directory)
    try:  # the first write of a command: an unwritable place is reported before anything is built
        path.parent.mkdir(parents=True, exist_ok=True)
        if Path(directory).is_dir() and not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))
    except OSError as exc:
        raise write_error(directory, exc) from exc
    # one instance per lock file in this process: a second holder in the *same* process nests (the caller's
    # own business, e.g. a Trainer inspecting a run it is training); only other processes are refused
    lock = FileLock(str(path), timeout=0, on_acquired=_record_holder, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:  # (a TimeoutError, so an OSError: caught first)
        holder = _holder(path)
        if wait:
            print(f"{what} {directory} is in use by {holder}; waiting for it to finish", file=sys.stderr)
            lock.acquire(timeout=-1)
            return lock
        raise BusyError(f"{what} {directory} is in use by {holder} (lock {path}); wait for it to finish, "
                        f"or pass another directory") from None
    except OSError as exc:
        raise write_error(path, exc) from exc
    return lock
