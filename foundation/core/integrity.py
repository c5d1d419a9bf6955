"""Checksums of the files foundation writes, and their verification when they are read back.

* Shard tars: the SHA-256 and size of each tar are computed while it is written
  (:class:`HashingWriter`) and recorded with the tar's entry in ``index.json``; the loader verifies a
  tar once per process before its first sample is used (:mod:`foundation.data.loader`).
* Directories (a checkpoint ``step-N/``, ``best/``): ``manifest.json`` lists every file under the
  directory with its SHA-256 and size; :func:`verify_manifest` checks them before anything is loaded.

Files written before checksums existed have no record: they are read as before (nothing is verified)
and :func:`verify_manifest` says so by returning ``False``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

from foundation.core.atomic import TMP_PREFIX, write_json

ALGORITHM = "sha256"
MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


class HashingWriter:
    """A binary file wrapper that hashes every byte written through it (``tarfile`` writes sequentially)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._hash = hashlib.new(ALGORITHM)
        self.size = 0

    def write(self, data: bytes) -> int:
        n = self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)
        return n

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.close()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_digest(path: str | Path) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of the file at ``path``."""
    h, size = hashlib.new(ALGORITHM), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def mismatch(path: str | Path, *, want: dict[str, Any], recorded_in: str | Path) -> str | None:
    """Why the file at ``path`` is not the one ``want`` (``{"sha256": …, "bytes": …}``) describes, or ``None``.

    The size is compared first (a stat, no read); the digest only when the sizes agree.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing ({recorded_in} lists it)"
    size = path.stat().st_size
    if want.get("bytes") is not None and size != int(want["bytes"]):
        return f"{path} has {size} bytes, {recorded_in} recorded {want['bytes']}"
    digest, _ = file_digest(path)
    if digest != want.get(ALGORITHM):
        return (f"{path} does not match its checksum ({ALGORITHM} {digest[:12]}…, {recorded_in} recorded "
                f"{str(want.get(ALGORITHM))[:12]}…)")
    return None


def _files(directory: Path) -> list[Path]:
    own = directory / MANIFEST_NAME
    return sorted(p for p in directory.rglob("*") if p.is_file() and p != own and not p.name.startswith(TMP_PREFIX))


def write_manifest(directory: str | Path) -> dict[str, Any]:
    """Write ``directory/manifest.json``: every file under ``directory`` (its own manifest and ``.tmp-*``
    leftovers excepted) with its SHA-256 and size.  A nested directory's ``manifest.json`` is listed as a
    file like any other."""
    directory = Path(directory)
    files = {}
    for p in _files(directory):
        digest, size = file_digest(p)
        files[p.relative_to(directory).as_posix()] = {ALGORITHM: digest, "bytes": size}
    manifest = {"algorithm": ALGORITHM, "files": files}
    write_json(directory / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The parsed ``manifest.json`` of ``directory`` or ``None`` when there is none (written before checksums)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"unreadable": f"{path} is unreadable ({type(exc).__name__}: {exc})"}
    return data


def manifest_problem(directory: str | Path, *, only: tuple[str, ...] | None = None) -> str | bool:
    """What is wrong with the files of ``directory`` by its ``manifest.json``: a message naming the first
    bad file, ``True`` when every listed file matches, ``False`` when there is no manifest (nothing checked).

    ``only``: check just these relative paths (those the manifest lists).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return False
    if "unreadable" in manifest:
        return manifest["unreadable"]
    recorded_in = directory / MANIFEST_NAME
    for rel, want in manifest["files"].items():
        if only is not None and rel not in only:
            continue
        if not isinstance(want, dict):
            return f"{recorded_in} has an invalid entry for {rel}"
        problem = mismatch(directory / rel, want=want, recorded_in=recorded_in)
        if problem:
            return problem
    return True
