"""A full disk (ENOSPC, simulated) while writing a shard, index.json, a checkpoint or the selected model.

The write path is monkeypatched to fail part-way, after some bytes reached the disk.  Every case must
raise :class:`WriteError` naming the file, leave no temporary file, keep the previous complete state
intact, and the same command rerun once there is space must finish exactly like an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from foundation.core import atomic
from foundation.engine.checkpoint import check_rng_states, latest_checkpoint
from foundation.core.errors import WriteError

from .conftest import assert_nothing_half_written, expect, full_disk_open, tiny_run_recipe, tree_bytes


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """An uninterrupted run: shards under ``clean/shards``, run in ``clean/run``."""
    from foundation.workflows.train import train

    root = tmp_path_factory.mktemp("clean")
    train(tiny_run_recipe(root), progress=False)
    return root


def _dataset_dir(shards: Path) -> Path:
    return next(p for p in shards.glob("synthetic-*") if p.is_dir())


def _same_shards(a: Path, b: Path) -> None:
    assert tree_bytes(_dataset_dir(a)) == tree_bytes(_dataset_dir(b))


# --------------------------------------------------------------------------- shards


def test_disk_full_while_writing_a_shard(clean, tmp_path, monkeypatch, request):
    from foundation.data import shards
    from foundation.data.shards import build_shards

    # the tar sink opens its temporary file itself (and hashes what it writes through it)
    monkeypatch.setattr(shards, "open", full_disk_open(3000, when=lambda p: ".tmp-sub-02-0001.tar" in p),
                        raising=False)
    recipe = tiny_run_recipe(tmp_path)
    directory = tmp_path / "shards" / _dataset_dir(clean / "shards").name
    expect("disk full while writing a shard", WriteError, lambda: build_shards(recipe, progress=False),
           directory / "train" / "sub-02-0001.tar", "No space left on device", request=request)
    assert not (directory / "index.json").exists()
    assert (directory / "_parts" / "sub-01.json").is_file() and not (directory / "_parts" / "sub-02.json").exists()
    assert not (directory / "train" / "sub-02-0001.tar").exists()
    assert_nothing_half_written(tmp_path)

    monkeypatch.undo()  # space again: the same command finishes the same shards
    build_shards(recipe, progress=False)
    _same_shards(tmp_path / "shards", clean / "shards")


def test_disk_full_while_writing_index_json(clean, tmp_path, monkeypatch, request):
    from foundation.data.shards import build_shards

    monkeypatch.setattr(atomic, "open", full_disk_open(100, when=lambda p: "index.json" in p), raising=False)
    recipe = tiny_run_recipe(tmp_path)
    directory = tmp_path / "shards" / _dataset_dir(clean / "shards").name
    expect("disk full while writing index.json", WriteError, lambda: build_shards(recipe, progress=False),
           directory / "index.json", request=request)
    assert not (directory / "index.json").exists()  # the directory stays "not finished"
    assert sorted(p.name for p in (directory / "_parts").iterdir()) == ["sub-01.json", "sub-02.json", "sub-03.json"]
    assert_nothing_half_written(tmp_path)

    monkeypatch.undo()
    build_shards(recipe, progress=False)
    _same_shards(tmp_path / "shards", clean / "shards")


# --------------------------------------------------------------------------- checkpoints and the selected model


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _same_metrics(a: dict, b: dict) -> None:
    for split in ("val", "test"):
        for key in ("mAP", "AUC", "hamming"):
            assert a[split][key] == pytest.approx(b[split][key], abs=1e-6), (split, key)
    assert a["best_step"] == b["best_step"]


def test_disk_full_while_writing_a_checkpoint(clean, tmp_path, monkeypatch, request):
    import accelerate.checkpointing as ckpt_module

    from foundation.workflows.train import train

    real_save = ckpt_module.save

    def save(obj, f, *args, **kwargs):  # torch.save on a full disk: part of the file, then a RuntimeError
        if ".tmp-step-00000004" in str(f) and "optimizer" in str(f):
            Path(f).write_bytes(b"PK\x03\x04" + b"\x00" * 60)
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 "
                               "(PytorchStreamWriter failed writing file data/0: file write failed)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module, "save", save)
    run = tmp_path / "run"
    err = expect("disk full while writing a checkpoint", WriteError, lambda: train(tiny_run_recipe(tmp_path), progress=False),
                 run / "checkpoints" / "step-00000004", "PytorchStreamWriter failed writing", request=request)
    assert isinstance(err, OSError)
    assert latest_checkpoint(run) == run / "checkpoints" / "step-00000002"  # the previous one, complete
    check_rng_states(run / "checkpoints" / "step-00000002", 0)
    assert not (run / "metrics.json").exists()
    assert_nothing_half_written(tmp_path)

    monkeypatch.undo()
    train(tiny_run_recipe(tmp_path), progress=False)  # resumes from step 2
    _same_metrics(_metrics(run), _metrics(clean / "run"))


def test_disk_full_while_writing_the_selected_model(clean, tmp_path, monkeypatch, request):
    from foundation.workflows.train import train

    when = lambda path: ".tmp-model.safetensors." in path
    monkeypatch.setattr(atomic, "open", full_disk_open(200, when=when), raising=False)
    run = tmp_path / "run"
    expect("disk full while writing the selected model", WriteError, lambda: train(tiny_run_recipe(tmp_path), progress=False),
           run / "best" / "model.safetensors", "No space left on device", request=request)
    assert not (run / "best" / "model.safetensors").exists() and not (run / "metrics.json").exists()
    assert_nothing_half_written(tmp_path)

    monkeypatch.undo()
    train(tiny_run_recipe(tmp_path), progress=False)
    _same_metrics(_metrics(run), _metrics(clean / "run"))


def test_disk_full_while_replacing_the_selected_model_keeps_the_old_one(clean, tmp_path, monkeypatch, request):
    from foundation.engine.checkpoint import load_model, save_model

    best = tmp_path / "best"
    model, meta = load_model(clean / "run" / "best")
    save_model(model, best, meta=meta)
    before = {p.name: p.read_bytes() for p in best.iterdir()}
    with torch_no_grad():
        for p in model.parameters():
            p.add_(1.0)  # a different (better) model to replace it with
    monkeypatch.setattr(atomic, "open", full_disk_open(200, when=lambda p: "model.safetensors" in p), raising=False)
    expect("disk full while replacing the selected model", WriteError, lambda: save_model(model, best, meta=meta),
           best / "model.safetensors", request=request)
    assert {p.name: p.read_bytes() for p in best.iterdir()} == before  # the complete old model, untouched
    load_model(best)


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_write_error_keeps_the_errno():
    from foundation.core.errors import write_error

    err = write_error("/data/x.tar", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == "/data/x.tar"
    assert str(err).startswith("cannot write /data/x.tar: No space left on device")
