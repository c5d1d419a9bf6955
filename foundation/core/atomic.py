"""Atomic file and directory writes: write to a temporary name in the same directory, then rename.

A reader (or a rerun after SIGKILL) sees either the old file, the complete new file, or nothing;
never half a file. Temporary names start with ``.tmp-`` so leftovers are easy to recognise and clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from foundation.core.errors import FoundationError, write_error

TMP_PREFIX = ".tmp-"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears only once complete (flush + fsync + rename).

    On any exception the temporary file is removed and nothing appears at ``path`` (a previous
    version stays as it was); an ``OSError`` (disk full, permissions) becomes a
    :class:`~foundation.core.errors.WriteError` naming ``path``.  A file that is replaced keeps its
    permission bits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():  # a replaced file keeps its permissions
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FoundationError):
            raise write_error(path, exc) from exc
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, allow_nan=True)
        fh.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``path`` when the block succeeds.

    ``path`` must not exist yet (a finished directory is never replaced behind the user's back).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    tmp = _tmp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Delete leftovers of interrupted atomic writes (``.tmp-*``) directly inside ``directory``."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.glob(f"{TMP_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
