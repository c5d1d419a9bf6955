"""Reading shard tars: the checksum check, the sample counts index.json lists, and a per-process cache.

Every reader of shards goes through :func:`read_tars` (training and evaluation streams, ``predict``, the split
checks): a tar is verified against index.json before its first sample, its sample count is checked after the last
one, and, for the training stream, a tar read in full may be kept in memory (:class:`TarCache`) so that a small
dataset is parsed from disk once per process instead of at every draw.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import webdataset as wds

from foundation.core.errors import ShardError


def _raise_shard_error(exc: Exception) -> bool:
    """webdataset handler: re-raise with the shard named (webdataset appends the URL to args)."""
    if isinstance(exc, ShardError):
        raise exc
    args = list(exc.args)
    urls = [a for a in args[1:] if isinstance(a, str)]
    if not urls:
        raise ShardError(f"cannot read shard: {type(exc).__name__}: {' '.join(map(str, args))}") from exc
    raise ShardError(f"shard {urls[-1]}: cannot read it ({type(exc).__name__}: {args[0]}); the tar is corrupt or "
                     f"not a tar ({REBUILD})") from exc


#: how to rebuild shards that changed after their build (a plain ``foundation shard`` would reuse them)
REBUILD = ("rebuild the dataset's shards with `foundation shard RECIPE --rebuild`, then train in a new run.dir "
           "(the existing checkpoints were trained on the old shards)")

#: tar path -> (size, mtime_ns, sha256) verified in this process: a tar is hashed once, not at every draw
_VERIFIED: dict[str, tuple[int, int, str]] = {}


def verify_tar(path: str, want: dict[str, Any] | None) -> None:
    """Raise :class:`ShardError` naming the tar when it is not the one ``index.json`` recorded (``want``:
    ``{"sha256": …, "bytes": …}``; ``None``: shards built before checksums, nothing to check).

    A tar is hashed the first time this process opens it; later opens cost one ``stat`` (a file replaced
    since has another mtime and is hashed again).
    """
    if not want:
        return
    from foundation.core.integrity import mismatch

    try:
        st = os.stat(path)
    except OSError:
        return  # a missing tar is reported by the reader, naming it
    seen = (st.st_size, st.st_mtime_ns, want["sha256"])
    if _VERIFIED.get(path) == seen:
        return
    problem = mismatch(path, want=want, recorded_in="index.json")
    if problem:
        raise ShardError(f"shard {problem}: the tar was damaged or replaced (another tar copied over it?) after "
                         f"the build; {REBUILD}")
    _VERIFIED[path] = seen


class TarCache:
    """Raw samples of tars this process has read, kept in memory up to a byte budget (per process).

    Training draws its tars again and again (a resampled stream); for a small dataset the tar parsing
    is most of the cost of a batch (docs/PERFORMANCE.md, round 9), so a tar that fits is parsed once
    per process and its samples are served from memory afterwards — the same samples in the same order,
    so the batches are unchanged.  A tar counts with its size on disk; once the budget is spent no
    further tar is kept (no eviction: every tar of a resampled stream is equally likely to come next).
    An entry is dropped when its tar's size or mtime changed since it was read (:func:`verify_tar`
    then hashes the new tar against index.json before it is read).  Forked loader processes inherit
    the entries of their parent, so the trainer reads a small dataset once per run
    (:meth:`foundation.data.loader.DatasetStream.warm_cache`).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int, list[dict[str, Any]]]] = {}
        self.used = 0

    def get(self, url: str) -> list[dict[str, Any]] | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        try:
            st = os.stat(url)
        except OSError:
            st = None
        if st is None or (st.st_size, st.st_mtime_ns) != entry[:2]:
            del self._entries[url]
            self.used -= entry[0]
            return None
        return entry[2]

    def room_for(self, url: str, budget: int) -> os.stat_result | None:
        """The ``stat`` of ``url`` if it is a local tar not kept yet that fits under ``budget`` bytes, else ``None``."""
        if url in self._entries:
            return None
        try:
            st = os.stat(url)
        except OSError:
            return None  # a URL webdataset streams (http, pipe:) or a missing file: not cached
        return st if self.used + st.st_size <= budget else None

    def put(self, url: str, stat: os.stat_result, samples: list[dict[str, Any]]) -> None:
        self._entries[url] = (stat.st_size, stat.st_mtime_ns, samples)
        self.used += stat.st_size

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0


#: this process' cache of training tars (:class:`TarCache`); ``read_tars(cache_bytes=…)`` fills it
TAR_CACHE = TarCache()


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cache_budget(mib: int, *, processes: int = 1) -> tuple[int, str | None]:
    """The tar cache's byte budget per loading process for ``train.shard_cache_mib`` = ``mib``, and a warning
    when it was lowered: ``processes`` loading processes (one per rank and loader worker on this machine) together
    keep at most half of the memory available now, so a budget set larger than the machine cannot exhaust it
    (each process reads tars until its budget is full)."""
    want = max(0, int(mib)) << 20
    free = available_memory()
    if not want or free is None:
        return want, None
    ceiling = free // 2 // max(1, processes)
    if want <= ceiling:
        return want, None
    return ceiling, (f"train.shard_cache_mib={mib} is more than half of the memory available now "
                     f"({free / 2**30:.1f} GiB over {processes} loading process(es)): each keeps at most "
                     f"{ceiling >> 20} MiB of training tars")


def read_tars(src: Iterable[dict[str, str]], *, expected: dict[str, int],
              checksums: dict[str, dict[str, Any]] | None = None, cache_bytes: int = 0) -> Iterator[dict[str, Any]]:
    """Raw samples of each tar named by ``src``, checked against the sample count index.json lists and,
    before its first sample, against the tar's checksum when index.json records one (:func:`verify_tar`).

    Python's streaming tarfile stops silently at a tar cut short at a member boundary, so without
    this check a truncated shard would just lose samples (and evaluation would not be exact-once).

    ``cache_bytes`` > 0: serve tars read before from :data:`TAR_CACHE` and keep each tar read in full
    while the cache holds less than ``cache_bytes`` (the yielded dicts are then shared with the cache:
    callers must not modify them, which no stage of the pipelines here does).
    """
    for item in src:
        url = item["url"]
        if checksums:
            verify_tar(url, checksums.get(url))
        cached = TAR_CACHE.get(url) if cache_bytes else None
        if cached is not None:
            yield from cached
            continue
        stat = TAR_CACHE.room_for(url, cache_bytes) if cache_bytes else None
        keep: list[dict[str, Any]] | None = [] if stat is not None else None
        n = 0
        for sample in wds.tarfile_samples([item], handler=_raise_shard_error):
            n += 1
            if keep is not None:
                keep.append(sample)
            yield sample
        want = expected.get(url)
        if want is not None and n != want:
            raise ShardError(f"shard {url}: holds {n} samples but index.json lists {want} "
                             f"(truncated or replaced tar; {REBUILD})")
        if keep is not None and TAR_CACHE.room_for(url, cache_bytes) is not None:  # read in full and counted
            TAR_CACHE.put(url, stat, keep)


def list_tar_keys(path: str) -> list[str]:
    """Sample keys of one tar (a path or any URL webdataset opens) from its member names alone."""
    keys: dict[str, None] = {}
    try:
        with wds.gopen(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                base, _ = wds.tariterators.base_plus_ext(member.name)
                if base is not None:
                    keys[base] = None
    except (OSError, tarfile.TarError) as exc:
        raise ShardError(f"cannot list shard {path}: {type(exc).__name__}: {exc}") from exc
    return list(keys)
