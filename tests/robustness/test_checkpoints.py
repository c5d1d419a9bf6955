"""Checkpoints and saved models that are wrong: another model's, not a checkpoint at all, incomplete.

The latest checkpoint is found by the step recorded inside it (never by file time), a directory without
its state file is not a checkpoint, and anything that does not fit is a :class:`CheckpointError` naming
the checkpoint or file.  Nothing is deleted or rewritten by a refused resume.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.torch import save_file

from foundation.engine.checkpoint import STATE_NAME, checkpoint_dirs, latest_checkpoint
from foundation.core.errors import CheckpointError

from .conftest import assert_nothing_half_written, expect, tiny_run_recipe, tree_bytes


@pytest.fixture
def run(trained, tmp_path):
    """``(copy of the trained run, trainer factory)``; the shards are shared read-only."""
    from foundation.engine.trainer import Trainer

    copy = tmp_path / "run"
    shutil.copytree(trained / "run", copy)
    return copy, lambda: Trainer(tiny_run_recipe(trained, run=copy), progress=False)


def test_checkpoint_from_a_different_model_shape(run, request):
    from foundation.model import CLIPMUSED

    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    state = json.loads((ckpt / STATE_NAME).read_text())
    spec = state["model"]
    spec["model"]["dim"] = 32  # a checkpoint of a wider model, copied over this one
    spec["model"]["heads"] = 4
    save_file(CLIPMUSED.from_config_dict(spec).state_dict(), ckpt / "model.safetensors")
    (ckpt / STATE_NAME).write_text(json.dumps(state))
    t = trainer()  # (rewrites config.yaml: the copy has another run.dir)
    before = tree_bytes(copy)
    expect("checkpoint from a different model shape", CheckpointError, t.resume, ckpt,
           "model.dim: 32 in the checkpoint, 16 now", request=request)
    assert tree_bytes(copy) == before


def test_checkpoint_older_than_a_new_model_option_still_resumes(run):
    """A key added to ModelConfig after the checkpoint was written takes its default on resume."""
    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    state = json.loads((ckpt / STATE_NAME).read_text())
    del state["model"]["model"]["backbone"]  # as written before model.backbone existed
    (ckpt / STATE_NAME).write_text(json.dumps(state))
    t = trainer()
    assert t.resume() and t.state.step == 4


def test_checkpoint_weights_of_another_shape_behind_a_matching_state_file(run, request):
    """Only the weights were swapped: Accelerate's strict load catches it, named as this checkpoint."""
    from foundation.model import CLIPMUSED

    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    spec = json.loads((ckpt / STATE_NAME).read_text())["model"]
    spec["model"]["head_hidden"] = 8
    save_file(CLIPMUSED.from_config_dict(spec).state_dict(), ckpt / "model.safetensors")
    expect("checkpoint weights of another shape", CheckpointError, trainer().resume, f"cannot restore {ckpt}",
           "size mismatch", request=request)


def test_checkpoint_file_that_is_not_a_checkpoint(run, request):
    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    (ckpt / "model.safetensors").write_bytes(b"these are not the weights you are looking for" * 10)
    expect("checkpoint file that is not a checkpoint (training state)", CheckpointError, trainer().resume,
           f"cannot restore {ckpt}", request=request)


def test_saved_model_file_that_is_not_a_model(run, tmp_path, request):
    from foundation.workflows.predict import predict_run

    copy, _ = run
    weights = copy / "best" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    scans = tmp_path / "x.npy"
    np.save(scans, np.zeros((1, 3, 8), np.float32))
    expect("saved model file that is not a safetensors file", CheckpointError,
           lambda: predict_run(copy, scans, subject="sub-01", progress=False), weights, "is not a safetensors file",
           request=request)


def test_saved_model_of_a_different_shape(run, tmp_path, request):
    from foundation.workflows.predict import predict_run

    copy, _ = run
    meta_path = copy / "best" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["model"]["dim"] = 32
    meta_path.write_text(json.dumps(meta))
    scans = tmp_path / "x.npy"
    np.save(scans, np.zeros((1, 3, 8), np.float32))
    expect("saved model of a different shape", CheckpointError,
           lambda: predict_run(copy, scans, subject="sub-01", progress=False), copy / "best" / "model.safetensors",
           "does not fit the model described in", "shape mismatch", request=request)


def test_run_directory_that_is_not_a_run(tmp_path, request):
    from foundation.workflows.evaluate import evaluate_run
    from foundation.workflows.predict import predict_run

    (tmp_path / "notes").mkdir()
    scans = tmp_path / "x.npy"
    np.save(scans, np.zeros((1, 3, 8), np.float32))
    expect("predict from a directory that is not a run", CheckpointError,
           lambda: predict_run(tmp_path / "notes", scans, subject="sub-01", progress=False),
           tmp_path / "notes" / "best", "is not a saved model directory", request=request)
    expect("evaluate a directory that is not a run", CheckpointError, lambda: evaluate_run(tmp_path / "notes"),
           tmp_path / "notes" / "config.yaml", request=request)


def test_incomplete_checkpoint_missing_its_rng_state(run, request):
    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    (ckpt / "random_states_0.pkl").unlink()
    expect("checkpoint missing its RNG state", CheckpointError, trainer().resume, ckpt / "random_states_0.pkl",
           "incomplete", request=request)


def test_latest_checkpoint_is_found_by_content_not_file_time(run):
    copy, trainer = run
    root = copy / "checkpoints"
    old, new = root / "step-00000002", root / "step-00000004"
    future = new.stat().st_mtime + 3600
    os.utime(old, (future, future))  # the older checkpoint looks newer on disk
    for p in old.iterdir():
        os.utime(p, (future, future))
    assert latest_checkpoint(copy) == new
    # a directory named like a checkpoint but without its state file is not one (e.g. copied half-way)
    (root / "step-00000009").mkdir()
    (root / "step-00000009" / "model.safetensors").write_bytes(b"partial")
    # a state file that does not parse makes the directory not a checkpoint either
    bad = root / "step-00000007"
    shutil.copytree(new, bad)
    (bad / STATE_NAME).write_text('{"step": 7, "best_st')
    assert [step for step, _ in checkpoint_dirs(copy)] == [2, 4]
    t = trainer()
    assert t.resume() and t.state.step == 4
    # the state file, not the directory name, gives the step
    (new / STATE_NAME).write_text(json.dumps({**json.loads((new / STATE_NAME).read_text()), "step": 1}))
    assert latest_checkpoint(copy) == old


def test_interrupted_checkpoint_write_is_ignored_and_cleared(run, trained):
    """A SIGKILL during a save leaves ``.tmp-step-*``: never resumed from, removed by the next save."""
    from foundation.engine.trainer import Trainer

    copy, _ = run
    root = copy / "checkpoints"
    shutil.rmtree(root / "step-00000004")
    (copy / "metrics.json").unlink()
    stale = root / ".tmp-step-00000004"
    shutil.copytree(root / "step-00000002", stale)
    assert latest_checkpoint(copy) == root / "step-00000002"
    t = Trainer(tiny_run_recipe(trained, run=copy), progress=False)
    t.fit()
    assert not stale.exists()
    assert [step for step, _ in checkpoint_dirs(copy)] == [2, 4]
    t.test()
    a = json.loads((copy / "metrics.json").read_text())["test"]
    b = json.loads((trained / "run" / "metrics.json").read_text())["test"]
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-6) and a["AUC"] == pytest.approx(b["AUC"], abs=1e-6)
    assert_nothing_half_written(copy)
