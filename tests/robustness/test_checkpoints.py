"""Checkpoints and saved models that are wrong: another model's, not a checkpoint at all, incomplete.

The latest checkpoint is found by the step recorded inside it (never by file time), a directory without
its state file is not a checkpoint, and anything that does not fit is a :class:`CheckpointError` naming
the checkpoint or file.  Nothing is deleted or rewritten by a refused resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from foundation.engine.checkpoint import STATE_NAME, checkpoint_dirs, latest_checkpoint
from foundation.core.errors import CheckpointError, RecipeError

from .conftest import assert_nothing_half_written, expect, reseal, tiny_run_recipe, tree_bytes


@contextlib.contextmanager
def lock_held_elsewhere(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holds ``run_dir``'s lock for the duration of the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from foundation.core.locks import hold; "
         "lock = hold(sys.argv[1], what='run directory'); print('held', flush=True); time.sleep(120)", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def assert_refused_while_busy(what: str, start, run_dir: Path, request) -> None:
    """While another process holds ``run_dir``'s lock, ``start()`` raises BusyError naming the holder and the
    lock file, and creates nothing at ``run_dir``."""
    from foundation.core.errors import BusyError
    from foundation.core.locks import lock_path

    with lock_held_elsewhere(run_dir) as holder:
        expect(what, BusyError, start, run_dir, f"process {holder.pid}", lock_path(run_dir), request=request)
        assert not run_dir.exists()


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
    reseal(ckpt)  # past the checksums (see test_flipped_bytes_in_a_checkpoint for those)
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
    reseal(ckpt)
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
    reseal(ckpt)
    expect("checkpoint weights of another shape", CheckpointError, trainer().resume, f"cannot restore {ckpt}",
           "size mismatch", request=request)


def test_checkpoint_file_that_is_not_a_checkpoint(run, request):
    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    (ckpt / "model.safetensors").write_bytes(b"these are not the weights you are looking for" * 10)
    reseal(ckpt)
    expect("checkpoint file that is not a checkpoint (training state)", CheckpointError, trainer().resume,
           f"cannot restore {ckpt}", request=request)


def test_saved_model_file_that_is_not_a_model(run, tmp_path, request):
    from foundation.workflows.predict import predict_run

    copy, _ = run
    weights = copy / "best" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    reseal(copy / "best")
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
    reseal(copy / "best")
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
    reseal(ckpt)  # as a checkpoint written by fewer processes
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


def test_best_is_rolled_back_to_the_checkpoint_resumed_from(run, request):
    """Issue 16.1: killed after step 4's validation wrote ``best/`` but before the step-4 checkpoint was
    complete, the rerun resumes from step 2: ``best/`` must be step 2's history's, not the killed process'."""
    import torch
    from safetensors.torch import load_file

    from foundation.engine.checkpoint import BEST_NAME

    copy, trainer = run
    root = copy / "checkpoints"
    shutil.rmtree(root / "step-00000004")  # the killed process never finished this checkpoint
    (copy / "metrics.json").unlink()
    # the killed process' best/: other weights, labelled with a step the resumed history has not reached
    weights = {k: v + 1 for k, v in load_file(str(copy / "best" / "model.safetensors")).items()}
    save_file(weights, copy / "best" / "model.safetensors")
    meta = json.loads((copy / "best" / "model.json").read_text())
    (copy / "best" / "model.json").write_text(json.dumps({**meta, "step": 4}))
    t = trainer()
    assert t.resume() and t.state.step == 2
    assert json.loads((copy / "best" / "model.json").read_text())["step"] == t.state.best_step
    saved = root / "step-00000002" / BEST_NAME
    assert tree_bytes(copy / "best") == tree_bytes(saved)
    assert all(torch.equal(v, load_file(str(saved / "model.safetensors"))[k])
               for k, v in load_file(str(copy / "best" / "model.safetensors")).items())
    assert_nothing_half_written(copy)


def test_best_without_validation_yet_is_removed_on_resume(run):
    """A checkpoint written before the first validation (best_step -1) leaves no ``best/`` behind."""
    copy, trainer = run
    root = copy / "checkpoints"
    shutil.rmtree(root / "step-00000004")
    state = json.loads((root / "step-00000002" / STATE_NAME).read_text())
    (root / "step-00000002" / STATE_NAME).write_text(json.dumps({**state, "best_step": -1, "history": [],
                                                                  "best_score": float("-inf")}))
    shutil.rmtree(root / "step-00000002" / "best")
    reseal(root / "step-00000002")
    t = trainer()
    assert t.resume() and t.state.best_step == -1
    assert not (copy / "best" / "model.safetensors").exists()


def test_directory_not_made_by_foundation_is_left_untouched(trained, tmp_path, request):
    """Issue 16.4: ``run.dir`` pointing at a user's folder (no marker, not empty) is refused, byte for byte
    untouched: its ``metrics.json``, ``best/`` and even its ``.tmp-*`` files stay."""
    from foundation.engine.trainer import RUN_MARKER
    from foundation.workflows.train import train

    folder = tmp_path / "mine"
    (folder / "best").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "metrics.json").write_text('{"mine": 1}')
    (folder / "best" / "model.safetensors").write_bytes(b"my weights")
    (folder / ".tmp-draft").write_text("my draft")
    before = tree_bytes(folder)
    expect("run.dir is a folder foundation did not make", RecipeError,
           lambda: train(tiny_run_recipe(trained, run=folder), progress=False), folder, RUN_MARKER,
           "metrics.json", "notes.txt", request=request)
    assert tree_bytes(folder) == before
    # an empty directory is fine, and becomes a marked run directory
    empty = tmp_path / "empty"
    empty.mkdir()
    train(tiny_run_recipe(trained, run=empty), progress=False)
    assert (empty / RUN_MARKER).is_file() and (empty / "metrics.json").is_file()


def test_second_process_on_the_same_run_directory(trained, tmp_path, request):
    """Issue 16.3: while a process holds a run directory, another ``train`` into it stops at once, naming
    the holder, and writes nothing there."""

    from foundation.workflows.train import train

    run_dir = tmp_path / "busy"
    assert_refused_while_busy("second process on a busy run directory",
                              lambda: train(tiny_run_recipe(trained, run=run_dir), progress=False), run_dir, request)
    train(tiny_run_recipe(trained, run=run_dir), progress=False)  # the holder is gone: the lock is free
    assert (run_dir / "metrics.json").is_file()


def test_non_finite_best_weights(run, request):
    """Issue 16.12: NaN in ``best/`` weights used to end in ``probs must be probabilities``; the file is named."""
    import torch
    from safetensors.torch import load_file

    from foundation.core.errors import NonFiniteError

    copy, trainer = run
    path = copy / "best" / "model.safetensors"
    weights = load_file(str(path))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, path)
    reseal(copy / "best")
    t = trainer()
    t.state.best_step = 4
    expect("NaN in best/ weights", NonFiniteError, t.test, path, name, request=request)


def test_train_seconds_are_summed_over_the_processes_of_a_run(run):
    """Issue 16.11: after a resume ``metrics.json``'s ``train_seconds`` used to count the last process only."""
    copy, trainer = run
    root = copy / "checkpoints"
    shutil.rmtree(root / "step-00000004")
    (copy / "metrics.json").unlink()
    state_path = root / "step-00000002" / STATE_NAME
    state = json.loads(state_path.read_text())
    assert state["train_seconds"] > 0  # recorded with the checkpoint
    state_path.write_text(json.dumps({**state, "train_seconds": 1000.0}))  # an earlier, slow process
    reseal(root / "step-00000002")
    t = trainer()
    t.fit()
    t.test()
    seconds = json.loads((copy / "metrics.json").read_text())["train_seconds"]
    assert 1000.0 < seconds < 1000.0 + 600
    assert json.loads((root / "step-00000004" / STATE_NAME).read_text())["train_seconds"] == pytest.approx(
        seconds, abs=5)
    t.close()
    # a rerun of the finished run trains nothing and reports the same total
    t = trainer()
    t.fit()
    t.test()
    assert json.loads((copy / "metrics.json").read_text())["train_seconds"] == pytest.approx(seconds, abs=1)


def test_resume_with_another_num_workers_is_refused(run, trained, request):
    """Issue 16.2: ``train.num_workers`` changes the batches (each worker draws its own stream), so a resume
    with another value ended at a third result; it is refused like any change of the run's recipe."""
    import dataclasses

    from foundation.engine.trainer import RESUMABLE_CHANGES, Trainer

    copy, _ = run
    recipe = tiny_run_recipe(trained, run=copy)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, num_workers=1))
    before = tree_bytes(copy)
    expect("resume with another train.num_workers", RecipeError, lambda: Trainer(recipe, progress=False), copy,
           "train.num_workers: 0 → 1", "run.dir=<new directory>", request=request)
    assert tree_bytes(copy) == before
    assert "train.num_workers" not in RESUMABLE_CHANGES


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_damaged_best_of_a_finished_run_is_restored_on_rerun(run, trained, damage):
    """Issue 16.16: a deleted ``best/model.safetensors`` of a finished run was silently replaced by the
    final weights labelled with the best step; a truncated one crashed with a safetensors traceback.
    The rerun puts back the copy the last checkpoint holds."""
    from foundation.engine.checkpoint import BEST_NAME
    from foundation.workflows.train import train

    copy, _ = run
    path = copy / "best" / "model.safetensors"
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    train(tiny_run_recipe(trained, run=copy), progress=False)
    assert tree_bytes(copy / "best") == tree_bytes(copy / "checkpoints" / "step-00000004" / BEST_NAME)
    assert tree_bytes(copy / "best") == tree_bytes(trained / "run" / "best")
    a = json.loads((copy / "metrics.json").read_text())
    b = json.loads((trained / "run" / "metrics.json").read_text())
    assert a["best_step"] == b["best_step"] and a["test"]["mAP"] == pytest.approx(b["test"]["mAP"], abs=1e-6)


def test_predict_arguments_and_a_text_file_named_npy(run, tmp_path, request):
    """Issue 16.14 / 16.18 / "also accepted": ``--threshold nan``, ``--device foo`` (blamed on the model file),
    ``--device cuda`` without a GPU, and a text file named ``.npy`` ("pickled data") are named as such."""
    import torch

    from foundation.core.errors import DataError, FoundationError
    from foundation.workflows.predict import predict_run

    copy, _ = run
    scans = tmp_path / "x.npy"
    np.save(scans, np.zeros((2, 3, 8), np.float32))
    expect("predict --threshold nan", FoundationError,
           lambda: predict_run(copy, scans, subject="sub-01", threshold=float("nan"), progress=False),
           "--threshold", "nan", request=request)
    expect("predict --device foo", FoundationError,
           lambda: predict_run(copy, scans, subject="sub-01", device="foo", progress=False), "--device 'foo'",
           request=request)
    if not torch.cuda.is_available():
        expect("predict --device cuda without a GPU", FoundationError,
               lambda: predict_run(copy, scans, subject="sub-01", device="cuda", progress=False), "--device cuda",
               "no CUDA GPU", request=request)
    text = tmp_path / "notes.npy"
    text.write_text("0.1 0.2 0.3\n")
    expect("text file named .npy", DataError, lambda: predict_run(copy, text, subject="sub-01", progress=False),
           text, "not a .npy file", request=request)
    assert len(predict_run(copy, scans, subject="sub-01", progress=False)) == 2


def test_rerun_of_a_finished_run_adds_no_tensorboard_files(run, trained):
    """Issue 16 ("also accepted"): ``logs/`` gained TensorBoard files on every invocation, even a rerun of a
    finished run (which trains nothing)."""
    from foundation.workflows.train import train

    copy, _ = run
    before = sorted(p.relative_to(copy) for p in (copy / "logs").rglob("*") if p.is_file())
    train(tiny_run_recipe(trained, run=copy), progress=False)
    assert sorted(p.relative_to(copy) for p in (copy / "logs").rglob("*") if p.is_file()) == before


def test_closed_form_baselines_guard_their_run_directory(trained, tmp_path, request):
    """The ridge/logistic and SRM baselines (closed_form.prepare_run) used to write config.yaml and
    metrics.json into any run.dir: now the marker check and the run lock of `train` apply to them too."""
    from foundation.engine.trainer import RUN_MARKER
    from foundation.workflows.linear import run_linear

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "metrics.json").write_text('{"mine": 1}')
    before = tree_bytes(folder)
    expect("closed-form baseline (ridge) on a folder foundation did not make", RecipeError,
           lambda: run_linear(tiny_run_recipe(trained, run=folder), progress=False), folder, RUN_MARKER,
           "notes.txt", request=request)
    assert tree_bytes(folder) == before

    run_dir = tmp_path / "busy"
    assert_refused_while_busy("closed-form baseline (ridge) on a busy run directory",
                              lambda: run_linear(tiny_run_recipe(trained, run=run_dir), progress=False), run_dir,
                              request)
    metrics = run_linear(tiny_run_recipe(trained, run=run_dir), progress=False)  # free again: it runs
    assert metrics.is_file() and (run_dir / RUN_MARKER).is_file()
    # another recipe into the same directory is refused like a training run's
    other = tiny_run_recipe(trained, run=run_dir)
    other.seed = 1
    expect("closed-form baseline (ridge) into a run directory of another recipe", RecipeError,
           lambda: run_linear(other, progress=False), run_dir, "seed", request=request)


def test_unchanged_best_is_linked_not_copied(trained, tmp_path):
    """A checkpoint whose best/ equals the previous checkpoint's holds hard links to those files, not a third
    copy; a better validation in between gives a new copy.  Resuming from either restores the right best/."""
    from foundation.engine.trainer import Trainer
    from foundation.workflows.train import train

    recipe = tiny_run_recipe(trained, run=tmp_path / "run")
    recipe.train.checkpoint_every = 1  # checkpoints 1..4, validations at 2 and 4
    recipe.train.keep_checkpoints = 10
    train(recipe, progress=False)
    root = tmp_path / "run" / "checkpoints"
    assert not (root / "step-00000001" / "best").exists()  # no validation yet
    two, three, four = (root / f"step-0000000{n}" / "best" / "model.safetensors" for n in (2, 3, 4))
    assert two.stat().st_ino == three.stat().st_ino and two.stat().st_nlink >= 2  # unchanged at step 3: linked
    history = json.loads((root / "step-00000004" / STATE_NAME).read_text())
    improved = history["best_step"] == 4
    assert (four.stat().st_ino != three.stat().st_ino) == improved  # a new best is a new file
    assert (tmp_path / "run" / "best" / "model.safetensors").stat().st_ino not in {two.stat().st_ino}
    # resuming from step 3 puts back step 2's best/ (through the link), byte for byte
    shutil.rmtree(root / "step-00000004")
    t = Trainer(recipe, progress=False)
    assert t.resume() and t.state.step == 3
    t.close()
    assert (tmp_path / "run" / "best" / "model.safetensors").read_bytes() == two.read_bytes()
    assert_nothing_half_written(tmp_path / "run")


def test_a_kill_while_an_old_checkpoint_is_pruned_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    """Pruning deletes files one by one; a SIGKILL in the middle must not leave a ``step-*`` that has its
    state file but not its weights (seen in CI: the random-kill test found ``step-25`` without
    ``model.safetensors``).  The checkpoint leaves ``step-*`` in one rename first; the next save clears it."""
    from foundation.core.atomic import remove_stale_tmp
    from foundation.engine import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    for step in (1, 2):
        d = root / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"weights")
        (d / STATE_NAME).write_text(json.dumps({"step": step}))

    class Killed(BaseException):
        pass

    real_rmtree = shutil.rmtree

    def killed_half_way(path, ignore_errors=False):  # deletes the weights, then the process dies
        path = Path(path)
        if not path.exists():
            return
        (path / "model.safetensors").unlink()
        raise Killed

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_half_way)
    with pytest.raises(Killed):
        ckpt.prune(root / "step-00000001")
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert [step for step, _ in checkpoint_dirs(tmp_path)] == [2]
    for d in root.glob("step-*"):
        assert (d / "model.safetensors").is_file(), d
    assert remove_stale_tmp(root) and sorted(p.name for p in root.iterdir()) == ["step-00000002"]
    ckpt.prune(root / "step-00000002")
    assert list(root.iterdir()) == []


def test_a_half_pruned_checkpoint_is_cleared_when_the_run_starts_again(run, trained):
    """What a kill during pruning leaves (``checkpoints/.tmp-pruned-step-*``) goes at the next start of the run,
    even one that saves nothing more (a finished run rerun), and nothing else is touched."""
    from foundation.engine.trainer import Trainer

    copy, _ = run
    root = copy / "checkpoints"
    left = root / ".tmp-pruned-step-00000002"
    shutil.copytree(root / "step-00000002", left)
    (left / "model.safetensors").unlink()
    before = [step for step, _ in checkpoint_dirs(copy)]
    Trainer(tiny_run_recipe(trained, run=copy), progress=False).close()
    assert not left.exists() and [step for step, _ in checkpoint_dirs(copy)] == before
    assert_nothing_half_written(copy)
