"""The loader: exact-once evaluation, the resampled training stream, and corrupt shards named."""

from __future__ import annotations

import collections
import io
import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from foundation.data.index import read_index
from foundation.data.loader import DatasetStream, collate
from foundation.data.shards import build_shards
from foundation.core.errors import ShardError

from .conftest import VOLUME, make_recipe, rewrite_tar, tar_keys

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Read-only ROI shards (tars of 7 samples: per subject 4 train, 1 val, 2 test) and every key per split."""
    recipe = make_recipe(tmp_path_factory.mktemp("shards"))
    index = build_shards(recipe, progress=False)["synthetic"]
    keys = {split: set() for split in SPLITS}
    for split in SPLITS:
        for path, _, _ in index.shards(split):
            keys[split].update(tar_keys(path))
    return index, keys


@pytest.fixture
def fresh(tmp_path: Path):
    """ROI shards of our own, to damage; their index forgets the tars' checksums (as shards built before
    them), so that the member-level checks are what the tests below meet (the checksums: see
    ``test_tar_that_differs_from_its_checksum``)."""
    index = build_shards(make_recipe(tmp_path), progress=False)["synthetic"]
    for entries in index.data["shards"].values():
        for entry in entries:
            entry.pop("sha256"), entry.pop("bytes")
    return index


def test_tar_that_differs_from_its_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tar is hashed once per process (later reads cost a stat) and one that differs is named."""
    from foundation.core import integrity
    from foundation.data import tars as tars_module

    index = build_shards(make_recipe(tmp_path), progress=False)["synthetic"]
    hashed: list[str] = []
    real = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda path: hashed.append(str(path)) or real(path))
    monkeypatch.setattr(tars_module, "_VERIFIED", {})
    n = _read_all(index)
    assert _read_all(index) == n
    tars = [str(p) for p, _, _ in index.shards("test")]
    assert sorted(hashed) == sorted(tars)  # each once, although read twice
    tar = _test_tar(index)
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01  # inside the first member's payload: the tar still reads
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=re.escape(str(tar)) + r" does not match its checksum.*--rebuild"):
        _read_all(index)


def _eval_keys(index, split: str, batch_size: int, **kw) -> list[str]:
    keys = []
    for batch in DatasetStream(index).eval_batches(split, batch_size, **kw):
        assert 0 < len(batch) <= batch_size
        keys.extend(batch.keys)
    return keys


# ----------------------------------------------------------------------------- exact-once evaluation


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("split", SPLITS)
def test_evaluation_reads_every_sample_exactly_once(built, split: str, world_size: int) -> None:
    index, expected = built
    assert len(expected[split]) == index.count(split) == {"train": 81, "val": 9, "test": 30}[split]
    per_rank = [_eval_keys(index, split, 5, rank=r, world_size=world_size) for r in range(world_size)]
    union = [k for keys in per_rank for k in keys]
    assert len(union) == len(set(union)), [k for k, n in collections.Counter(union).items() if n > 1][:5]
    assert set(union) == expected[split]
    if world_size <= len(index.shards(split)):
        assert all(per_rank), "a rank with shards to read got nothing"


def test_evaluation_with_dataloader_workers(built) -> None:
    index, expected = built
    keys = _eval_keys(index, "test", 5, num_workers=2)
    assert len(keys) == len(set(keys)) and set(keys) == expected["test"]


def test_evaluation_of_a_subject_subset(built) -> None:
    index, expected = built
    stream = DatasetStream(index, subjects=["sub-03"])
    keys = [k for b in stream.eval_batches("test", 4) for k in b.keys]
    assert sorted(keys) == sorted(k for k in expected["test"] if "/sub-03/" in k)
    assert stream.count("test") == 10
    with pytest.raises(ShardError, match=r"sub-09"):
        DatasetStream(index, subjects=["sub-09"])


# ----------------------------------------------------------------------------- training stream


def _take(index, n: int, **kw) -> list:
    kw = {"seed": 0, "segment": 0, "rank": 0, "shuffle_buffer": 20, **kw}
    return list(itertools.islice(iter(DatasetStream(index).train_batches(6, **kw)), n))


def test_training_batches_are_full_typed_and_deterministic(built) -> None:
    index, expected = built
    batches = _take(index, 8)
    assert len(batches) == 8
    for b in batches:
        assert b.dataset == "synthetic" and len(b) == 6
        assert b.fmri.shape == (6, 3, 8) and b.fmri.dtype == torch.float16
        assert b.labels.shape == (6, 12) and b.labels.dtype == torch.float32
        assert set(b.labels.unique().tolist()) <= {0.0, 1.0}
        assert b.low.shape == (6, 16) and b.low.dtype == torch.float16
        assert b.high.shape == (6, 16) and b.high.dtype == torch.float16
        assert set(b.keys) <= expected["train"]
        assert b.subjects == ["synthetic/" + k.split("/")[1] for k in b.keys]
    subjects = {s for b in batches for s in b.subjects}
    assert subjects == {"synthetic/sub-01", "synthetic/sub-02", "synthetic/sub-03"}

    keys = [b.keys for b in batches]
    again = _take(index, 8)
    assert [b.keys for b in again] == keys
    for a, b in zip(batches, again):
        assert torch.equal(a.fmri, b.fmri) and torch.equal(a.labels, b.labels) and torch.equal(a.low, b.low)
    assert [b.keys for b in _take(index, 8, rank=1)] != keys
    assert [b.keys for b in _take(index, 8, segment=1)] != keys
    assert [b.keys for b in _take(index, 8, seed=1)] != keys


def test_training_batches_of_a_volume_dataset_are_padded(tmp_path: Path) -> None:
    index = build_shards(make_recipe(tmp_path, VOLUME, samples_per_shard=16), progress=False)["synthetic"]
    pad = max(index.data["voxels"].values())
    (batch,) = _take(index, 1)
    assert batch.fmri.shape == (6, pad) and batch.fmri.dtype == torch.float16
    for i, subject in enumerate(batch.subjects):
        n = index.data["voxels"][subject.split("/")[1]]
        assert not batch.fmri[i, n:].any()


# ----------------------------------------------------------------------------- corrupt shards


def _test_tar(index) -> Path:
    return index.root / "test" / "sub-02-0000.tar"


def _read_all(index, split: str = "test") -> int:
    return len(_eval_keys(index, split, 4))


def test_garbage_tar_is_named(fresh) -> None:
    tar = _test_tar(fresh)
    tar.write_bytes(np.random.default_rng(0).bytes(tar.stat().st_size))
    with pytest.raises(ShardError, match=re.escape(str(tar))):
        _read_all(fresh)


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.75])
def test_truncated_tar_is_named(fresh, fraction: float) -> None:
    tar = _test_tar(fresh)
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ShardError, match=re.escape(str(tar))):
        _read_all(fresh)


def test_tar_missing_a_member_names_the_sample(fresh) -> None:
    tar = _test_tar(fresh)
    first = tar_keys(tar)[0]
    rewrite_tar(tar, lambda name, payload: None if name.endswith(".low.npy") else payload)
    with pytest.raises(ShardError, match=re.escape(first) + r".*low\.npy") as err:
        _read_all(fresh)
    assert str(tar) in str(err.value)


def _replace_member(tar: Path, member: str, payload: bytes) -> None:
    rewrite_tar(tar, lambda name, data: payload if name == member else data)


def test_pickled_npy_member_is_refused(fresh) -> None:
    tar = _test_tar(fresh)
    key = tar_keys(tar)[3]
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": "payload"}], dtype=object), allow_pickle=True)
    _replace_member(tar, f"{key}.fmri.npy", buf.getvalue())
    with pytest.raises(ShardError, match=re.escape(key) + r" member fmri\.npy: not a plain \.npy"):
        _read_all(fresh)


def test_empty_npy_member_is_named(fresh) -> None:
    tar = _test_tar(fresh)
    key = tar_keys(tar)[1]
    _replace_member(tar, f"{key}.high.npy", b"")
    with pytest.raises(ShardError, match=re.escape(key) + r" member high\.npy"):
        _read_all(fresh)


def test_wrong_label_width_in_a_shard_names_the_sample(fresh) -> None:
    tar = _test_tar(fresh)
    key = tar_keys(tar)[2]
    buf = io.BytesIO()
    np.save(buf, np.zeros(5, np.uint8))
    _replace_member(tar, f"{key}.labels.npy", buf.getvalue())
    with pytest.raises(ShardError, match=re.escape(key) + r".*index\.json declares 12"):
        _read_all(fresh)


def test_index_whose_counts_disagree_with_its_shards_is_refused(fresh) -> None:
    path = fresh.root / "index.json"
    data = json.loads(path.read_text())
    data["counts"]["val"]["sub-01"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(ShardError, match=re.escape(str(path)) + r".*'val'"):
        read_index(fresh.root)


def test_index_listing_a_missing_tar_is_refused(fresh) -> None:
    tar = fresh.root / "train" / "sub-03-0001.tar"
    tar.unlink()
    with pytest.raises(ShardError, match=re.escape(str(tar))):
        read_index(fresh.root)


def test_missing_or_broken_index_is_named(tmp_path: Path, fresh) -> None:
    with pytest.raises(ShardError, match=re.escape(str(tmp_path / "nowhere" / "index.json"))):
        read_index(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(fresh.root, copy)
    (copy / "index.json").write_text('{"format": 1, "dataset": ')
    with pytest.raises(ShardError, match=re.escape(str(copy / "index.json")) + " is not valid JSON"):
        read_index(copy)


# ----------------------------------------------------------------------------- collate


def _decoded(key: str, *, labels: int = 4, fmri: tuple[int, ...] = (3, 8)) -> dict:
    return {"key": key, "url": "/shards/test/sub-01-0000.tar", "meta": {"subject": key.split("/")[1]},
            "fmri": np.zeros(fmri, np.float16), "labels": np.zeros(labels, np.uint8),
            "low": np.zeros(16, np.float16), "high": np.zeros(16, np.float16)}


def test_collate_checks_label_width_and_fmri_shape() -> None:
    good = [_decoded("ds/sub-01/0000000"), _decoded("ds/sub-02/0000001")]
    batch = collate(good, dataset="ds", fmri_shape=(3, 8), pad_voxels=None, num_labels=4)
    assert batch.fmri.shape == (2, 3, 8) and batch.labels.dtype == torch.float32
    assert batch.subjects == ["ds/sub-01", "ds/sub-02"]
    with pytest.raises(ShardError, match=r"sample ds/sub-02/0000007 has \(5,\) labels.*declares 4"):
        collate([*good, _decoded("ds/sub-02/0000007", labels=5)], dataset="ds", fmri_shape=(3, 8),
                pad_voxels=None, num_labels=4)
    with pytest.raises(ShardError, match=r"sample ds/sub-01/0000009 has fMRI shape \(3, 9\)"):
        collate([_decoded("ds/sub-01/0000009", fmri=(3, 9))], dataset="ds", fmri_shape=(3, 8),
                pad_voxels=None, num_labels=4)


# ----------------------------------------------------------------------------- train_fraction


def _fraction_keys(index, fraction: float) -> set[str]:
    stream = DatasetStream(index, train_fraction=fraction)
    return {k for keys in stream.train_keys().values() for k in keys}


def test_train_fraction_keeps_a_fixed_nested_subset_per_subject(built) -> None:
    index, expected = built
    per_subject = collections.Counter(k.split("/")[1] for k in expected["train"])  # 27 per subject
    small, half, full = (_fraction_keys(index, f) for f in (0.01, 0.5, 1.0))
    assert full == expected["train"]
    assert collections.Counter(k.split("/")[1] for k in small) == {s: 1 for s in per_subject}  # at least one each
    assert collections.Counter(k.split("/")[1] for k in half) == {s: 14 for s in per_subject}  # ceil(0.5 * 27)
    assert small < half < full  # nested: more data keeps what less data had
    assert _fraction_keys(index, 0.5) == half  # fixed, not random per call
    assert DatasetStream(index, train_fraction=0.5).train_count() == 42


def test_train_fraction_stream_draws_only_kept_samples(built) -> None:
    index, _ = built
    kept = _fraction_keys(index, 0.2)
    stream = DatasetStream(index, train_fraction=0.2)
    seen = {k for b in itertools.islice(iter(stream.train_batches(6, seed=0, segment=0, shuffle_buffer=10)), 30)
            for k in b.keys}
    assert seen == kept  # 30 batches of 6 from 18 kept samples: all of them, nothing else
    with pytest.raises(ValueError, match="train_fraction"):
        DatasetStream(index, train_fraction=0.0)


def test_stream_slots_read_different_batches(built) -> None:
    index, _ = built
    a, b = _take(index, 3, rank=0), _take(index, 3, rank=1)
    assert [x.keys for x in a] != [x.keys for x in b]


@pytest.mark.parametrize("fraction", [1.0, 0.2])
def test_background_loader_gives_the_same_batches_and_leaves_the_rng_alone(built, fraction: float) -> None:
    """Issue 18: ``background=True`` runs the pipeline in one DataLoader worker process; that worker is
    worker 0 of 1, exactly the main process' stream, and its base seed comes from a private generator,
    so neither the batches nor the global torch RNG (which dropout draws from) change."""
    index, _ = built

    def take(background: bool) -> tuple[list, torch.Tensor]:
        torch.manual_seed(123)
        stream = DatasetStream(index, train_fraction=fraction)
        it = iter(stream.train_batches(6, seed=0, segment=0, rank=0, shuffle_buffer=20, background=background))
        batches = list(itertools.islice(it, 8))
        del it
        return batches, torch.rand(4)  # the global RNG after the loader was made and read

    main, rng_main = take(False)
    back, rng_back = take(True)
    assert [b.keys for b in back] == [b.keys for b in main]
    for a, b in zip(main, back):
        for name in ("fmri", "labels", "low", "high"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(rng_main, rng_back)
    # what the background process replaces: a DataLoader worker drawn the plain way consumes the global RNG
    torch.manual_seed(123)
    it = iter(torch.utils.data.DataLoader(DatasetStream(index).train_batches(6, seed=0, segment=0),
                                          batch_size=None, num_workers=1))
    next(it)
    del it
    assert not torch.equal(torch.rand(4), rng_main)


def _open_files(pid: int) -> set[str]:
    """The paths process ``pid`` has open, read from ``/proc/<pid>/fd``.  A descriptor the process closes
    while it is listed (the worker keeps reading shards) is skipped, not an error: CI once failed on
    that race."""
    targets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.add(str(Path(os.readlink(fd)).resolve()))
        except OSError:
            continue
    return targets


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_loader_workers_do_not_keep_the_run_directory_lock(built, tmp_path: Path) -> None:
    """A forked DataLoader worker (the background loader, or num_workers) holds no copy of the run
    directory's lock file (filelock closes it in a forked child), so a killed trainer's lock is not kept
    alive by its loader process; the trainer's own lock stays held.  A guard: issue 18 made such a worker
    part of every default run."""
    from foundation.core.locks import hold, lock_path

    index, _ = built
    lock = hold(tmp_path / "run", what="run directory")
    try:
        for background, workers in ((True, 0), (False, 1)):
            loader = DatasetStream(index).train_batches(6, seed=0, segment=0, shuffle_buffer=20,
                                                        num_workers=workers, background=background)
            it = iter(loader)
            next(it)
            pids = [w.pid for w in it._workers]
            assert pids
            for pid in pids:
                targets = _open_files(pid)
                assert str(lock_path(tmp_path / "run").resolve()) not in targets
            del it
        assert lock.is_locked
    finally:
        lock.release()


def test_background_loader_forks_on_linux_only(built, monkeypatch) -> None:
    """Elsewhere a DataLoader worker is spawned and would have to pickle the pipeline: stay in-process."""
    from torch.utils.data import DataLoader

    index, _ = built
    stream = DatasetStream(index)
    on_linux = stream.train_batches(6, seed=0, segment=0, shuffle_buffer=20, background=True)
    assert isinstance(on_linux, DataLoader) and on_linux.multiprocessing_context.get_start_method() == "fork"
    monkeypatch.setattr("foundation.data.loader.sys.platform", "darwin")
    elsewhere = stream.train_batches(6, seed=0, segment=0, shuffle_buffer=20, background=True)
    assert not isinstance(elsewhere, DataLoader)
    assert [b.keys for b in itertools.islice(iter(elsewhere), 2)] == [b.keys for b in _take(index, 2)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the background loader forks on Linux only")
def test_loader_workers_exit_when_their_trainer_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed trainer cannot stop its loader workers; they must not outlive it (the 2-process kill test once
    hung on an orphaned worker holding the launcher's output open: its queue to the dead trainer full, it waited
    at exit forever).  A child process reads one batch of ~0.9 MB volumes (more than a pipe holds, so the workers'
    prefetched batches fill their queues) through the background loader and through two plain workers, reports
    its workers' pids and is SIGKILLed: within 4 s none of them is left.  (That hang was not reproduced in
    isolation: here torch's own check, between batches every 5 s, ends the workers after ~5 s, so the 4 s bound is
    what tells ``exit_with_parent``'s quarter-second watch from it; the old code fails this test on time.)"""
    import signal
    import subprocess
    import time

    index = build_shards(make_recipe(tmp_path / "shards", {**VOLUME, "n_subjects": 1, "grid": [24, 24, 24],
                                                            "seconds": 80}), progress=False)["synthetic"]
    script = tmp_path / "reader.py"
    script.write_text(
        "import sys, time, os, psutil\n"
        "from foundation.data.index import read_index\n"
        "from foundation.data.loader import DatasetStream\n"
        "stream = DatasetStream(read_index(sys.argv[1]))\n"
        "its = [iter(stream.train_batches(16, seed=0, segment=0, rank=0, shuffle_buffer=20, background=True)),\n"
        "       iter(stream.train_batches(16, seed=0, segment=1, rank=0, shuffle_buffer=20, num_workers=2))]\n"
        "for it in its: next(it)\n"
        "print(' '.join(str(c.pid) for c in psutil.Process().children()), flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script), str(index.root)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) >= 3, workers  # the background worker and two plain ones
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 4
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in workers if _running(pid)]
    assert not alive, f"loader workers {alive} outlived their killed parent"


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ----------------------------------------------------------------------------- tar cache, batch transfer


@pytest.fixture
def tar_reads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Counts the tars webdataset parses (by path), with an empty :data:`TAR_CACHE` for the test."""
    from foundation.data import tars

    reads: collections.Counter = collections.Counter()
    real = tars.wds.tarfile_samples

    def counting(src, **kw):
        src = list(src)
        reads.update(item["url"] for item in src)
        return real(src, **kw)

    monkeypatch.setattr(tars.wds, "tarfile_samples", counting)
    tars.TAR_CACHE.clear()
    yield reads
    tars.TAR_CACHE.clear()


@pytest.mark.parametrize("background", [False, True])
def test_cached_tars_give_the_same_batches_and_are_parsed_once(built, tar_reads, background: bool) -> None:
    """Issue 18, round 9: with ``cache_bytes`` a training tar is parsed once per process (with the background
    loader: read here first, so the forked process starts with it) and the batches do not change."""
    index, _ = built
    plain = _take(index, 12)
    assert max(tar_reads.values()) > 1  # the stream draws its tars again and again
    tar_reads.clear()
    cached = _take(index, 12, cache_bytes=1 << 30, background=background)
    assert [b.keys for b in cached] == [b.keys for b in plain]
    for a, b in zip(plain, cached):
        for name in ("fmri", "labels", "low", "high"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    train_tars = {str(p) for p, _, _ in index.shards("train")}
    if background:  # the worker's reads are not counted here: this process read every tar once, up front
        assert tar_reads == collections.Counter(train_tars)
    else:
        assert set(tar_reads) <= train_tars and max(tar_reads.values()) == 1
    tar_reads.clear()
    _take(index, 12, cache_bytes=1 << 30)  # a second stream in the same process: nothing parsed again
    assert not tar_reads


def test_tar_cache_keeps_to_its_budget_and_rereads_a_changed_tar(built, tar_reads) -> None:
    from foundation.data.tars import TAR_CACHE

    index, _ = built
    sizes = sorted(os.path.getsize(p) for p, _, _ in index.shards("train"))
    budget = sizes[0] + sizes[1] - 1  # room for one tar, not for two
    DatasetStream(index).warm_cache(budget)
    assert 0 < TAR_CACHE.used <= budget
    assert sum(tar_reads.values()) == 1  # a tar that would not fit any more is not read at all
    kept = [str(p) for p, _, _ in index.shards("train") if TAR_CACHE.get(str(p)) is not None]
    assert len(kept) == 1
    tar_reads.clear()
    stat = os.stat(kept[0])
    os.utime(kept[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "replaced" (same bytes)
    try:
        assert TAR_CACHE.get(kept[0]) is None and TAR_CACHE.used == 0
        DatasetStream(index).warm_cache(budget)
        assert tar_reads[kept[0]] == 1
    finally:
        os.utime(kept[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    TAR_CACHE.clear()
    tar_reads.clear()
    _take(index, 4, cache_bytes=0)  # no budget: nothing kept
    assert TAR_CACHE.used == 0


def test_small_batches_cross_processes_inside_the_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader process hands a small batch over as arrays in its pickle (no shared-memory file per tensor,
    whose descriptor torch passes over a connection of its own); a large one keeps torch's shared memory."""
    from foundation.data.loader import Batch

    g = torch.Generator().manual_seed(0)
    sent = Batch("d", torch.randn(4, 3, 8, generator=g).half(), torch.ones(4, 5),
                 torch.randn(4, 16, generator=g).half(), torch.randn(4, 16, generator=g).half(),
                 ["d/sub-01"] * 4, [f"d/sub-01/{i}" for i in range(4)], ["t.tar"] * 4)

    def through_a_loader_process() -> Batch:
        loader = torch.utils.data.DataLoader([sent], batch_size=None, num_workers=1, multiprocessing_context="fork")
        (got,) = list(loader)
        return got

    got_small = through_a_loader_process()
    assert not got_small.fmri.is_shared()
    monkeypatch.setattr(Batch, "inline_bytes", 0)  # the fork inherits it
    got_large = through_a_loader_process()
    assert got_large.fmri.is_shared()
    for got in (got_small, got_large):
        assert isinstance(got, Batch) and got.keys == sent.keys and got.subjects == sent.subjects
        for name in ("fmri", "labels", "low", "high"):
            a, b = getattr(got, name), getattr(sent, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the background loader forks on Linux only")
def test_a_worker_whose_trainer_died_before_it_started_exits_at_once() -> None:
    """The trainer's pid is taken in the trainer, not in the worker: a worker that starts after its trainer was
    killed (handed to init between the fork and ``worker_init_fn``) must leave, not watch init for ever.  Here the
    "worker" is a process whose recorded trainer has exited and is not its parent."""
    import subprocess

    from foundation.data.loader import _worker_init

    init = _worker_init()
    assert init.keywords == {"parent": os.getpid()}
    trainer = subprocess.Popen(["true"])
    trainer.wait()
    code = ("import os, time\nfrom foundation.data.loader import exit_with_parent\n"
            f"exit_with_parent(0, parent={trainer.pid})  # the trainer that forked it is gone\n"
            "time.sleep(30)\nprint('still here', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0 and "still here" not in done.stdout, done.stderr[-2000:]
