"""Issue 16.9/16.15: files changed after foundation wrote them are detected by their checksums.

Shard tars carry their SHA-256 and size in ``index.json``; every checkpoint and ``best/`` carry a
``manifest.json``.  A flipped byte in a checkpoint makes the resume fall back to the previous intact
checkpoint (saying so) or stop naming the file; flipped bytes in ``best/`` stop ``evaluate``/``predict``
naming the file; a tar copied over another subject's is named with the rebuild that works.  Files written
before checksums existed still load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from foundation.core.errors import CheckpointError, ShardError

from .conftest import assert_nothing_half_written, expect, note, tiny_run_recipe, tree_bytes, unseal_index


def flip_bits(path: Path, n: int = 64) -> None:
    """Flip the lowest bit of ``n`` values in the data section of a safetensors file: the file still
    parses and every weight stays finite (only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # header length, then the JSON header
    for i in range(n):
        data[start + 4 * i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run(trained, tmp_path):
    """``(copy of the trained run, trainer factory)``; the shards are shared read-only."""
    from foundation.engine.trainer import Trainer

    copy = tmp_path / "run"
    shutil.copytree(trained / "run", copy)
    return copy, lambda: Trainer(tiny_run_recipe(trained, run=copy), progress=False)


def test_flipped_bytes_in_a_checkpoint_resume_from_the_previous_one(run, trained, capsys, request):
    """The damaged latest checkpoint is set aside (kept, renamed) and the run resumes from the intact one,
    saying so; it then ends exactly as the uninterrupted run did."""
    from foundation.workflows.train import train

    copy, _ = run
    ckpt = copy / "checkpoints" / "step-00000004"
    flip_bits(ckpt / "model.safetensors")
    (copy / "metrics.json").unlink()
    train(tiny_run_recipe(trained, run=copy), progress=False)
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if line.startswith("warning:"))
    note("flipped bytes in the latest checkpoint (an earlier one is intact)", "warning", message,
         ckpt / "model.safetensors", "damaged-step-00000004", "step-00000002", request=request)
    assert "resuming" in err and "from step-00000002" in err
    assert (copy / "checkpoints" / "damaged-step-00000004" / "model.safetensors").is_file()  # kept
    clean = json.loads((trained / "run" / "metrics.json").read_text())
    ours = json.loads((copy / "metrics.json").read_text())
    assert ours["best_step"] == clean["best_step"]
    for split in ("val", "test"):
        assert ours[split]["mAP"] == pytest.approx(clean[split]["mAP"], abs=1e-6)


def test_flipped_bytes_in_the_only_checkpoint(run, request):
    copy, trainer = run
    shutil.rmtree(copy / "checkpoints" / "step-00000002")
    ckpt = copy / "checkpoints" / "step-00000004"
    flip_bits(ckpt / "model.safetensors")
    t = trainer()
    before = tree_bytes(copy)
    expect("flipped bytes in the only checkpoint", CheckpointError, t.resume, ckpt / "model.safetensors",
           "does not match its checksum", "no earlier checkpoint is intact", request=request)
    assert tree_bytes(copy) == before  # nothing renamed, nothing rewritten


def test_flipped_bytes_in_best_stop_evaluate_and_predict(run, tmp_path, request):
    from foundation.workflows.evaluate import evaluate_run
    from foundation.workflows.predict import predict_run

    copy, _ = run
    weights = copy / "best" / "model.safetensors"
    flip_bits(weights)
    expect("flipped bytes in best/ met by evaluate", CheckpointError, lambda: evaluate_run(copy), weights,
           "does not match its checksum", request=request)
    scans = tmp_path / "x.npy"
    np.save(scans, np.zeros((1, 3, 8), np.float32))
    expect("flipped bytes in best/ met by predict", CheckpointError,
           lambda: predict_run(copy, scans, subject="sub-01", progress=False), weights, request=request)


def test_tar_copied_over_another_subjects_tar(trained, tmp_path, request):
    """Same size, same sample count: only the checksum tells; the message gives the rebuild that works,
    and that rebuild does work."""
    from foundation.data.shards import build_shards
    from foundation.workflows.train import train

    shards = tmp_path / "shards"
    shutil.copytree(trained / "shards", shards)
    directory = next(shards.glob("synthetic-*"))
    theirs, ours = directory / "val" / "sub-01-0000.tar", directory / "val" / "sub-02-0000.tar"
    assert theirs.stat().st_size == ours.stat().st_size
    shutil.copyfile(theirs, ours)
    recipe = tiny_run_recipe(tmp_path, run=tmp_path / "run")
    expect("a tar copied over another subject's tar", ShardError, lambda: train(recipe, progress=False), ours,
           "does not match its checksum", "foundation shard RECIPE --rebuild", request=request)
    assert not (tmp_path / "run" / "checkpoints").exists()  # found at the first evaluation, before any checkpoint
    assert_nothing_half_written(tmp_path, skip=(ours,))
    build_shards(recipe, progress=False, rebuild=True)  # what the message says
    shutil.rmtree(tmp_path / "run")
    train(recipe, progress=False)


def test_corrupt_tar_message_points_at_a_rebuild_that_works(trained, tmp_path, request):
    """Issue 16.15: without checksums (shards built before them) a truncated tar is found by its sample count;
    the message used to say `foundation shard RECIPE`, which reuses the finished shards."""
    from foundation.data.shards import build_shards
    from foundation.workflows.train import train

    shards = tmp_path / "shards"
    shutil.copytree(trained / "shards", shards)
    directory = next(shards.glob("synthetic-*"))
    unseal_index(directory)
    tar = directory / "val" / "sub-02-0000.tar"
    tar.write_bytes(np.random.default_rng(0).bytes(tar.stat().st_size))
    recipe = tiny_run_recipe(tmp_path, run=tmp_path / "run")
    expect("corrupt tar names the rebuild that works", ShardError, lambda: train(recipe, progress=False), tar,
           "foundation shard RECIPE --rebuild", request=request)
    build_shards(recipe, progress=False)  # a plain rerun reuses the damaged shards ...
    with pytest.raises(ShardError):
        train(recipe, progress=False)
    build_shards(recipe, progress=False, rebuild=True)  # ... the rebuild the message names repairs them
    shutil.rmtree(tmp_path / "run")
    train(recipe, progress=False)


def test_files_without_checksums_still_load(run, trained, tmp_path):
    """Shards, checkpoints and best/ written before checksums: read unverified, as before."""
    from foundation.core.integrity import MANIFEST_NAME
    from foundation.data.index import read_index
    from foundation.data.loader import DatasetStream
    from foundation.workflows.evaluate import evaluate_run

    copy, trainer = run
    for manifest in copy.rglob(MANIFEST_NAME):
        manifest.unlink()
    t = trainer()
    assert t.resume() and t.state.step == 4
    t.close()
    assert evaluate_run(copy)["mAP"] == pytest.approx(
        json.loads((trained / "run" / "metrics.json").read_text())["test"]["mAP"], abs=1e-6)
    shards = tmp_path / "shards"
    shutil.copytree(trained / "shards", shards)
    directory = next(shards.glob("synthetic-*"))
    unseal_index(directory)
    stream = DatasetStream(read_index(directory))
    assert stream.checksums == {}
    assert sum(len(b) for b in stream.eval_batches("val", 5)) == stream.count("val")


def test_checksums_are_recorded(trained):
    from foundation.core.integrity import file_digest

    directory = next((trained / "shards").glob("synthetic-*"))
    index = json.loads((directory / "index.json").read_text())
    for entries in index["shards"].values():
        for entry in entries:
            assert file_digest(directory / entry["path"]) == (entry["sha256"], entry["bytes"])
    for folder in [trained / "run" / "best", *(trained / "run" / "checkpoints").glob("step-*")]:
        manifest = json.loads((folder / "manifest.json").read_text())["files"]
        assert "model.safetensors" in manifest
        for rel, want in manifest.items():
            assert file_digest(folder / rel) == (want["sha256"], want["bytes"])
    assert "best/model.safetensors" in json.loads(
        (trained / "run" / "checkpoints" / "step-00000004" / "manifest.json").read_text())["files"]
