"""Stream shards into batches.

Training reads an endless, *resampled* stream per dataset: shards are drawn with probability
proportional to their sample count (so every sample is equally likely), read sequentially and mixed
in a shuffle buffer.  The stream is cut into *segments* (one per checkpoint interval) whose seeds
derive from ``(seed, segment, rank, worker)`` only, so a run resumed from a checkpoint sees exactly
the batches an uninterrupted run would have seen.  Every rank draws its own shards (explicit node
split by seed), so no rank waits for another and uneven shard counts cannot stall DDP.

Evaluation reads each sample exactly once: the split's shards are dealt round-robin to ranks and
read in order.

Length (~460 lines, over the ~400 guide): decoding, the value checks of ``collate``, the batch transfer and
the two streams share the sample format and its error messages; split, they would import each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from foundation.core.errors import ShardError
from foundation.data.index import ShardIndex
from foundation.data.tars import TAR_CACHE, list_tar_keys, read_tars, verify_tar

MEMBERS = ("fmri.npy", "labels.npy", "low.npy", "high.npy", "json")


@dataclasses.dataclass
class Batch:
    """One batch of one dataset.

    Attributes:
        dataset: dataset id.
        fmri: ROI ``(B, T, D)`` or volume ``(B, V_max)`` (zero-padded in-mask voxels), float16.
        labels: ``(B, C)`` float32 multi-hot.
        low, high: ``(B, D_low)``, ``(B, D_high)`` guidance features, float16.
        subjects: global subject ids ``dataset/subject``, length B.
        keys: sample keys ``dataset/subject/index``, length B.
        urls: the shard (tar path or URL) each sample was read from, length B.
    """

    dataset: str
    fmri: torch.Tensor
    labels: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    subjects: list[str]
    keys: list[str]
    urls: list[str] = dataclasses.field(default_factory=list)

    #: a CPU batch of at most this many tensor bytes crosses to another process (a loader process to
    #: the trainer) inside its pickle, as arrays; a larger one goes through torch's shared memory, one
    #: file per tensor, whose descriptors torch passes over a connection each (~0.4 ms per tensor,
    #: most of a small batch's transfer: docs/PERFORMANCE.md, round 9)
    inline_bytes: ClassVar[int] = 4 << 20

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        parts = [getattr(self, f.name) for f in dataclasses.fields(self)]
        tensors = [p for p in parts if isinstance(p, torch.Tensor)]
        if all(t.device.type == "cpu" for t in tensors) and sum(t.nbytes for t in tensors) <= self.inline_bytes:
            parts = [p.numpy() if isinstance(p, torch.Tensor) else p for p in parts]
        return _batch_from_parts, tuple(parts)

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, *, non_blocking: bool = True) -> Batch:
        move = partial(torch.Tensor.to, device=device, non_blocking=non_blocking)
        return dataclasses.replace(self, fmri=move(self.fmri), labels=move(self.labels),
                                   low=move(self.low), high=move(self.high))

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return dataclasses.replace(self, fmri=self.fmri.pin_memory(), labels=self.labels.pin_memory(),
                                   low=self.low.pin_memory(), high=self.high.pin_memory())


def _batch_from_parts(*parts: Any) -> Batch:
    """Unpickle a :class:`Batch` (its tensors arrive as tensors or, when small, as arrays)."""
    return Batch(*(torch.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts))


_NPY_MAGIC = b"\x93NUMPY"
#: npy header bytes -> (dtype, shape, fortran_order, data offset).  A shard's members repeat a handful
#: of headers (one per array shape), so after the first sample a member is decoded without parsing
#: its header (``np.load`` evaluates it as a Python literal: the larger part of its cost at 10 kB).
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
_NPY_HEADERS_MAX = 4096


def _npy_header(payload: bytes) -> tuple[bytes, int] | None:
    """``(header bytes, data offset)`` of an .npy payload, or ``None`` when it is not one."""
    if len(payload) < 10 or payload[:6] != _NPY_MAGIC:
        return None
    major = payload[6]
    if major == 1:
        start, length = 10, int.from_bytes(payload[8:10], "little")
    elif major in (2, 3) and len(payload) >= 12:
        start, length = 12, int.from_bytes(payload[8:12], "little")
    else:
        return None
    if len(payload) < start + length:
        return None
    return payload[start : start + length], start + length


def _load_npy(payload: bytes, *, what: str) -> np.ndarray:
    """One .npy member → a read-only array that *views* ``payload`` (no copy of the data).

    The first payload with a given header goes through ``np.load(allow_pickle=False)`` (full
    validation; object arrays are refused); later ones with the same header are checked for length
    and viewed with ``np.frombuffer``.  ``collate`` copies the views into the batch tensors, once.
    """
    try:
        head = _npy_header(payload)
        info = _NPY_HEADERS.get(head[0]) if head is not None else None
        if info is None:
            arr = np.load(io.BytesIO(payload), allow_pickle=False)
            if head is None or arr.dtype.hasobject:
                return arr
            fortran = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
            info = (arr.dtype, arr.shape, fortran, head[1])
            if len(_NPY_HEADERS) >= _NPY_HEADERS_MAX:
                _NPY_HEADERS.clear()
            _NPY_HEADERS[head[0]] = info
        dtype, shape, fortran, offset = info
        count = math.prod(shape)
        if len(payload) - offset < count * dtype.itemsize:
            raise ValueError(f"{len(payload) - offset} data bytes for {count} x {dtype} (truncated)")
        flat = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape, order="F" if fortran else "C")
    except (ValueError, EOFError, OSError) as exc:  # EOFError: an empty member
        raise ShardError(f"{what}: not a plain .npy array ({type(exc).__name__}: {exc})") from exc


def decode(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw tar members (bytes) → arrays; a missing or malformed member names the sample and shard."""
    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise ShardError(f"shard {url}: sample {key} lacks member(s) {missing}")
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"shard {url}: sample {key} has invalid json metadata ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("subject"), str):
        raise ShardError(f"shard {url}: sample {key} has json metadata without a 'subject' ({meta!r:.80})")
    out = {m.removesuffix(".npy"): _load_npy(sample[m], what=f"shard {url}: sample {key} member {m}")
           for m in MEMBERS if m.endswith(".npy")}
    for name, kinds, expected in (("fmri", "f", "float"), ("low", "f", "float"), ("high", "f", "float"),
                                  ("labels", "uib", "0/1 integer")):
        if out[name].dtype.kind not in kinds:
            raise ShardError(f"shard {url}: sample {key} member {name}.npy has dtype {out[name].dtype}, "
                             f"expected a {expected} array")
    out.update(key=key, url=url, meta=meta)
    return out


def collate(samples: Sequence[dict[str, Any]], *, dataset: str, fmri_shape: tuple[int, ...] | None,
            pad_voxels: int | None, num_labels: int) -> Batch:
    """Stack decoded samples into a :class:`Batch` (volume voxels zero-padded to ``pad_voxels``)."""
    for s in samples:
        if s["labels"].shape != (num_labels,):
            raise ShardError(f"shard {s['url']}: sample {s['key']} has {s['labels'].shape} labels, "
                             f"index.json declares {num_labels}")
        if fmri_shape is not None and s["fmri"].shape != fmri_shape:
            raise ShardError(f"shard {s['url']}: sample {s['key']} has fMRI shape {s['fmri'].shape}, "
                             f"index.json declares {fmri_shape}")
    # Each member is copied exactly once, from its (read-only) view of the tar bytes into the batch.
    if pad_voxels is None:
        fmri = np.stack([s["fmri"] for s in samples])
    else:
        fmri = np.empty((len(samples), pad_voxels), dtype=np.float16)
        for i, s in enumerate(samples):
            n = s["fmri"].shape[0]
            fmri[i, :n] = s["fmri"]
            fmri[i, n:] = 0
    labels = np.stack([s["labels"] for s in samples], dtype=np.float32)
    low = np.stack([s["low"] for s in samples])
    high = np.stack([s["high"] for s in samples])
    # one pass over the stacked batch; only a failing batch is scanned sample by sample for the culprit
    if not (np.isfinite(fmri).all() and np.isfinite(low).all() and np.isfinite(high).all()
            and np.isin(labels, (0, 1)).all()):
        _check_values(samples)
    return Batch(
        dataset=dataset,
        fmri=torch.from_numpy(fmri),
        labels=torch.from_numpy(labels),
        low=torch.from_numpy(low),
        high=torch.from_numpy(high),
        subjects=[f"{dataset}/{s['meta']['subject']}" for s in samples],
        keys=[s["key"] for s in samples],
        urls=[s["url"] for s in samples],
    )


def _check_values(samples: Sequence[dict[str, Any]]) -> None:
    """Every input is finite and every label 0 or 1; else a :class:`ShardError` naming the first culprit's
    shard, sample and member (the build checks this too: this catches a tar changed since)."""
    for s in samples:
        for name in ("fmri", "low", "high"):
            if not np.isfinite(s[name]).all():
                bad = int(np.size(s[name]) - np.isfinite(s[name]).sum())
                raise ShardError(f"shard {s['url']}: sample {s['key']} member {name}.npy holds {bad} non-finite "
                                 f"value(s) (NaN/Inf); rebuild the shards from intact data")
        labels = s["labels"]
        if not np.isin(labels, (0, 1)).all():
            odd = sorted({float(v) for v in np.unique(labels) if v not in (0, 1)})[:3]
            raise ShardError(f"shard {s['url']}: sample {s['key']} member labels.npy holds value(s) {odd}; "
                             f"labels must be 0/1")


class WeightedShardSampler(IterableDataset):
    """Endless stream of ``{"url": …}`` drawn with replacement, weighted by sample count.

    The RNG seed is ``(seed, segment, rank, worker)``: deterministic, different on every rank and
    DataLoader worker (the explicit node split that webdataset requires under DDP).
    """

    def __init__(self, urls: Sequence[str], weights: Sequence[float], *, seed: int, segment: int, rank: int) -> None:
        if not urls:
            raise ShardError("no training shards to sample from")
        self.urls, self.weights = list(urls), list(weights)
        self.seed, self.segment, self.rank = seed, segment, rank

    def __iter__(self) -> Iterator[dict[str, str]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(f"{self.seed}/{self.segment}/{self.rank}/{worker}")
        while True:
            yield {"url": rng.choices(self.urls, weights=self.weights)[0]}


class EvalShardList(IterableDataset):
    """The split's shards dealt round-robin over ``(rank, worker)``: each shard is read once overall."""

    def __init__(self, urls: Sequence[str], *, rank: int, world_size: int) -> None:
        self.urls, self.rank, self.world_size = list(urls), rank, world_size

    def __iter__(self) -> Iterator[dict[str, str]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.urls[self.rank :: self.world_size]
        for url in mine[worker::n_workers]:
            yield {"url": url}


def _stable_rank(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


#: ``train_fraction`` subsets up to this many samples are held in memory (raw bytes) while training
CACHE_KEPT_SAMPLES = 20_000


class CachedSamples(IterableDataset):
    """Endless seeded reshuffles of an in-memory list of raw samples (seed per segment, slot, worker)."""

    def __init__(self, samples: Sequence[dict[str, Any]], *, seed: int, segment: int, rank: int) -> None:
        if not samples:
            raise ShardError("no training samples to draw from")
        self.samples, self.seed, self.segment, self.rank = samples, seed, segment, rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(f"cached/{self.seed}/{self.segment}/{self.rank}/{worker}")
        order = list(range(len(self.samples)))
        while True:
            rng.shuffle(order)
            for i in order:
                yield self.samples[i]


def exit_with_parent(_worker_id: int, *, parent: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: the worker exits when the process that started it is gone.

    A trainer killed with SIGKILL (out of memory, a scheduler's kill) cannot stop its loader workers; torch's own
    check runs only between batches, and a worker whose queue to the dead trainer is full then waits forever at
    exit (seen in the 2-process kill test: an orphaned ``pt_data_worker`` holding the launcher's output open).  A
    daemon thread polls the parent pid four times a second and leaves with ``os._exit`` (no queue flush to wait on).
    Touches no random state, so the batches are unchanged.

    ``parent``: the trainer's pid, recorded in the trainer when the loader is made (:func:`_worker_init`).  Read in
    the worker instead, a trainer killed between the fork and this call would already have handed its worker to
    init, and the worker would watch init for ever (torch's own check reads it there too).
    """
    import threading
    import time

    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:  # gone before the worker got here
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        os._exit(0)

    threading.Thread(target=watch, name="foundation-exit-with-parent", daemon=True).start()


def _worker_init() -> partial:
    """The loader workers' ``worker_init_fn``: :func:`exit_with_parent` with this process's pid, taken now, before
    any worker is forked."""
    return partial(exit_with_parent, parent=os.getpid())


class DatasetStream:
    """Training and evaluation batches of one dataset's shards (optionally a subset of subjects).

    ``train_fraction`` < 1 trains on that fraction of every subject's training samples (at least
    one): a fixed subset chosen by a hash of the sample key, so the same fraction always keeps the
    same samples and a larger fraction keeps a superset of a smaller one.  Evaluation always reads
    every sample.
    """

    def __init__(self, index: ShardIndex, *, subjects: Iterable[str] | None = None,
                 train_fraction: float = 1.0) -> None:
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = train_fraction
        self.index = index
        self.dataset = index.dataset
        self.subjects = set(subjects) if subjects is not None else None
        if self.subjects is not None:
            unknown = sorted(self.subjects - set(index.data["subjects"]))
            if unknown:
                raise ShardError(f"dataset {self.dataset!r} has no subject(s) {unknown}; "
                                 f"it has {index.data['subjects']}")
        info = index.info
        self.kind = info.kind
        self.num_labels = info.num_labels
        self.fmri_shape = tuple(info.token_shape) if info.kind == "roi" else None
        self.pad_voxels = max(index.data["voxels"].values()) if info.kind == "volume" else None
        self.checksums = index.checksums()

    def _collate(self, samples: Sequence[dict[str, Any]]) -> Batch:
        return collate(samples, dataset=self.dataset, fmri_shape=self.fmri_shape,
                       pad_voxels=self.pad_voxels, num_labels=self.num_labels)

    def _loader(self, pipeline: wds.DataPipeline, num_workers: int, pin_memory: bool,
                background: bool = False) -> Iterable[Batch]:
        if num_workers == 0 and background and sys.platform.startswith("linux"):
            # one worker process runs the pipeline: it is worker 0 of 1, exactly what the main process is
            # without workers, so the batches are the same; a private generator keeps the DataLoader from
            # drawing its base seed from the global RNG (which the model's dropout draws from).  Forked
            # (Linux only): the pipeline is not pickled (a spawned worker would need it to be)
            return DataLoader(pipeline, batch_size=None, num_workers=1, pin_memory=pin_memory,
                              generator=torch.Generator(), multiprocessing_context="fork",
                              worker_init_fn=_worker_init())
        if num_workers == 0:
            return pipeline
        return DataLoader(pipeline, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                          worker_init_fn=_worker_init())

    def train_keys(self) -> dict[str, list[str]]:
        """``{tar path: kept sample keys}`` of the training shards under ``train_fraction`` (cached)."""
        if getattr(self, "_train_keys", None) is None:
            by_subject: dict[str, list[tuple[str, str]]] = {}
            for path, _, subject in self.index.shards("train", self.subjects):
                verify_tar(str(path), self.checksums.get(str(path)))
                by_subject.setdefault(subject, []).extend((str(path), k) for k in list_tar_keys(str(path)))
            kept: dict[str, list[str]] = {}
            for rows in by_subject.values():
                n = max(1, math.ceil(self.train_fraction * len(rows)))
                for url, key in sorted(rows, key=lambda r: _stable_rank(r[1]))[:n]:
                    kept.setdefault(url, []).append(key)
            self._train_keys = kept
        return self._train_keys

    def _kept_raw_samples(self) -> list[dict[str, Any]]:
        """Raw (undecoded) training samples kept by ``train_fraction``, in a fixed order (cached)."""
        if getattr(self, "_kept_raw", None) is None:
            kept = self.train_keys()
            keep = {k for keys in kept.values() for k in keys}
            shards = [(str(p), c) for p, c, _ in self.index.shards("train", self.subjects) if str(p) in kept]
            raw = read_tars(({"url": u} for u, _ in shards), expected=dict(shards), checksums=self.checksums)
            self._kept_raw = sorted((x for x in raw if x["__key__"] in keep), key=lambda x: x["__key__"])
        return self._kept_raw

    def train_count(self) -> int:
        """Training samples this stream draws from (after ``train_fraction``)."""
        if self.train_fraction >= 1.0:
            return self.count("train")
        return sum(len(v) for v in self.train_keys().values())

    def train_batches(self, batch_size: int, *, seed: int, segment: int, rank: int = 0,
                      shuffle_buffer: int = 2000, num_workers: int = 0, pin_memory: bool = False,
                      background: bool = False, cache_bytes: int = 0) -> Iterable[Batch]:
        """Endless shuffled training batches of this segment (deterministic given the arguments).

        ``rank`` is the stream's slot: the trainer gives every (process, micro-batch) its own.
        ``background`` (with ``num_workers=0`` only, on Linux): read, decode and collate in one forked
        background process instead of the caller's, overlapping with its work; the batches are the
        same, and the caller's RNGs are not touched.  Elsewhere the batches are made in-process.
        ``cache_bytes``: keep up to this many bytes of training tars in memory (:class:`TarCache`), so a
        tar is parsed once per process, not at every draw; with loader processes the tars that fit are
        read here first (:meth:`warm_cache`), so forked processes start with them.  The same batches.
        """
        shards = self.index.shards("train", self.subjects)
        expected = {str(p): c for p, c, _ in shards}
        n_train = max(1, self.train_count())
        stages: list[Any] = []
        if self.train_fraction >= 1.0:
            urls, weights = [str(p) for p, _, _ in shards], [c for _, c, _ in shards]
            source: list[Any] = [WeightedShardSampler(urls, weights, seed=seed, segment=segment, rank=rank),
                                 partial(read_tars, expected=expected, checksums=self.checksums,
                                         cache_bytes=cache_bytes)]
        elif n_train <= CACHE_KEPT_SAMPLES:
            # a small subset: read its raw samples once, then draw from memory (re-reading whole tars for
            # a few kept samples each would make every batch cost dozens of tar reads)
            source = [CachedSamples(self._kept_raw_samples(), seed=seed, segment=segment, rank=rank)]
        else:
            kept = self.train_keys()
            urls = [str(p) for p, _, _ in shards if str(p) in kept]
            weights = [len(kept[u]) for u in urls]
            keep = {k for keys in kept.values() for k in keys}
            source = [WeightedShardSampler(urls, weights, seed=seed, segment=segment, rank=rank),
                      partial(read_tars, expected=expected, checksums=self.checksums, cache_bytes=cache_bytes),
                      wds.select(lambda sample: sample["__key__"] in keep)]
        if cache_bytes and not isinstance(source[0], CachedSamples) and (
                num_workers or (background and sys.platform.startswith("linux"))):
            self.warm_cache(cache_bytes)
        pipeline = wds.DataPipeline(
            *source,
            *stages,
            # a buffer larger than the data would read it several times over before the first batch
            wds.shuffle(min(shuffle_buffer, n_train), initial=min(shuffle_buffer, n_train),
                        rng=random.Random(f"shuffle/{seed}/{segment}/{rank}")),
            wds.map(decode),
            wds.batched(batch_size, collation_fn=self._collate, partial=False),
        )
        return self._loader(pipeline, num_workers, pin_memory, background)

    def warm_cache(self, cache_bytes: int) -> None:
        """Read this stream's training tars into :data:`TAR_CACHE` of this process, in index order, while
        they fit in ``cache_bytes`` (a tar cached already costs one ``stat``)."""
        shards = self.index.shards("train", self.subjects)
        expected = {str(p): c for p, c, _ in shards}
        for url in expected:
            if TAR_CACHE.get(url) is None and TAR_CACHE.room_for(url, cache_bytes) is not None:
                for _ in read_tars([{"url": url}], expected=expected, checksums=self.checksums,
                                   cache_bytes=cache_bytes):
                    pass

    def eval_batches(self, split: str, batch_size: int, *, rank: int = 0, world_size: int = 1,
                     num_workers: int = 0, pin_memory: bool = False) -> Iterable[Batch]:
        """Every sample of ``split`` owned by this rank, once, in shard order."""
        shards = self.index.shards(split, self.subjects)
        urls = [str(p) for p, _, _ in shards]
        pipeline = wds.DataPipeline(
            EvalShardList(urls, rank=rank, world_size=world_size),
            partial(read_tars, expected={str(p): c for p, c, _ in shards}, checksums=self.checksums),
            wds.map(decode),
            wds.batched(batch_size, collation_fn=self._collate, partial=True),
        )
        return self._loader(pipeline, min(num_workers, max(1, len(urls) // max(world_size, 1))), pin_memory)

    def count(self, split: str) -> int:
        return self.index.count(split, self.subjects)
