"""End-to-end: shard → train → checkpoints → metrics.json, resume after SIGKILL, evaluate."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from foundation.core.errors import RecipeError
from tests.conftest import tiny_recipe_dict


def _metric_values(d, prefix=""):
    """Flatten a metrics dict to {path: float} (numbers only; wall-clock times are not results)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_metric_values(v, f"{prefix}{k}."))
        elif k.endswith("seconds"):
            continue
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def test_tiny_run_end_to_end(tiny_recipe, tmp_path):
    from foundation.workflows.train import train

    path = train(tiny_recipe(), progress=False)
    metrics = json.loads(Path(path).read_text())
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    assert (run / "best" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000010", "step-00000020"]
    test = metrics["test"]
    for key in ("mAP", "AUC", "hamming", "chance_mAP"):
        assert 0.0 <= test[key] <= 1.0
    assert test["n"] == 3 * 12  # every subject saw the shared test set
    assert set(test["per_subject"]) == {"synthetic/sub-01", "synthetic/sub-02", "synthetic/sub-03"}
    assert set(test["per_dataset"]) == {"synthetic"}
    assert metrics["best_step"] in (10, 20)
    assert list(Path(tiny_recipe().shards.root).glob("synthetic-*/index.json"))


def test_changed_recipe_refuses_existing_run_dir(tiny_recipe):
    from foundation.workflows.train import train

    train(tiny_recipe(), progress=False)
    with pytest.raises(RecipeError, match=r"train\.lr"):
        train(tiny_recipe(**{"train.lr": 0.5}), progress=False)


def test_evaluate_recomputes_metrics(tiny_recipe, tmp_path):
    from foundation.workflows.evaluate import evaluate_run
    from foundation.workflows.train import train

    metrics = json.loads(Path(train(tiny_recipe(), progress=False)).read_text())
    again = evaluate_run(tmp_path / "run", split="test")
    for key in ("mAP", "AUC", "hamming"):
        assert again[key] == pytest.approx(metrics["test"][key], abs=1e-6)


@pytest.mark.parametrize("tokens", ["shared", "identity"])
def test_baseline_switches_train(tiny_recipe, tokens):
    from foundation.workflows.train import train

    metrics = json.loads(Path(train(tiny_recipe(**{"model.tokens": tokens, "train.steps": 10}),
                                     progress=False)).read_text())
    assert metrics["model_tokens"] == tokens
    assert math.isfinite(metrics["test"]["mAP"])


def test_single_subject_switch(tiny_recipe):
    from foundation.workflows.train import train

    recipe = tiny_recipe(**{"train.steps": 10})
    recipe.datasets[0].subjects = ["sub-02"]
    metrics = json.loads(Path(train(recipe, progress=False)).read_text())
    assert set(metrics["test"]["per_subject"]) == {"synthetic/sub-02"}
    assert metrics["test"]["n"] == 12


def _launch(recipe_path: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "foundation", "train", str(recipe_path), "--no-progress"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_midway_then_rerun_matches_uninterrupted(tmp_path):
    """Kill `foundation train` with SIGKILL after its first checkpoint; the rerun resumes and ends
    with the same metrics as a run that was never interrupted."""
    steps = {"steps": 200, "eval_every": 20, "checkpoint_every": 20}
    recipes = {}
    for name in ("killed", "clean"):
        d = tiny_recipe_dict(tmp_path)
        d["train"].update(steps)
        d["run"]["dir"] = str(tmp_path / name)
        recipes[name] = tmp_path / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(d))

    clean = _launch(recipes["clean"], tmp_path)
    out, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, out

    proc = _launch(recipes["killed"], tmp_path)
    first = tmp_path / "killed" / "checkpoints" / "step-00000020"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()

    rerun = _launch(recipes["killed"], tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert "resuming" in out

    a = _metric_values(json.loads((tmp_path / "killed" / "metrics.json").read_text()))
    b = _metric_values(json.loads((tmp_path / "clean" / "metrics.json").read_text()))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), key


def test_volume_mode_end_to_end(tiny_recipe):
    from foundation.workflows.train import train

    recipe = tiny_recipe(**{"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3})
    recipe.datasets[0].options = {"mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 60,
                                  "n_categories": 4}
    recipe.model.volume_channels = [4, 8]
    metrics = json.loads(Path(train(recipe, progress=False)).read_text())
    assert metrics["test"]["n"] == 2 * 12  # 20 % of 60 seconds per subject
    assert set(metrics["test"]["per_subject"]) == {"synthetic/sub-01", "synthetic/sub-02"}


@pytest.mark.slow
def test_accelerate_launch_script_without_config(tmp_path):
    """`accelerate launch foundation/train.py RECIPE` works with no accelerate config file."""
    d = tiny_recipe_dict(tmp_path)
    d["train"].update({"steps": 4, "eval_every": 2, "checkpoint_every": 2})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(d))
    script = Path(__file__).parents[2] / "foundation" / "train.py"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                           str(script), str(recipe), "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"metrics: {tmp_path / 'run' / 'metrics.json'}" in proc.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_processes"] == 1


def test_resume_refuses_a_checkpoint_of_another_model(tiny_recipe, tmp_path):
    """A checkpoint whose subject vocabulary differs from the model the recipe builds is refused."""
    from foundation.core.integrity import write_manifest
    from foundation.engine.checkpoint import STATE_NAME, latest_checkpoint
    from foundation.core.errors import CheckpointError
    from foundation.engine.trainer import Trainer
    from foundation.workflows.train import train

    train(tiny_recipe(), progress=False)
    state_file = latest_checkpoint(tmp_path / "run") / STATE_NAME
    state = json.loads(state_file.read_text())
    state["model"]["vocab"] = state["model"]["vocab"][:-1]
    state_file.write_text(json.dumps(state))
    write_manifest(state_file.parent)  # past the checksums: the vocabulary check is what is tested
    trainer = Trainer(tiny_recipe(), progress=False)
    with pytest.raises(CheckpointError, match="other subjects"):
        trainer.resume()


def test_background_loader_changes_no_result(tiny_recipe, tmp_path):
    """Issue 18: the training batches made in a background process (the default) or in the main process, with
    or without the training tars held in memory, give bit-identical metrics and weights, so neither setting is
    part of a run's identity."""
    from safetensors.torch import load_file

    from foundation.engine.trainer import RESUMABLE_CHANGES
    from foundation.workflows.train import train

    from foundation.data.tars import TAR_CACHE

    runs = []
    for background, cache_mib in ((False, 0), (True, 0), (False, 256), (True, 256)):  # round 9: the tar cache too
        TAR_CACHE.clear()
        run = tmp_path / f"run-{background}-{cache_mib}"
        path = train(tiny_recipe(**{"train.background_loader": background, "train.shard_cache_mib": cache_mib,
                                    "run.dir": str(run)}), progress=False)
        runs.append((_metric_values(json.loads(Path(path).read_text())), load_file(run / "best" / "model.safetensors")))
    assert TAR_CACHE.used > 0  # the last run read its training tars into this process (before forking its loader)
    TAR_CACHE.clear()
    m0, w0 = runs[0]
    for m1, w1 in runs[1:]:
        assert m0 == m1
        assert w0.keys() == w1.keys() and all(w0[k].equal(w1[k]) for k in w0)
    assert {"train.background_loader", "train.shard_cache_mib"} <= RESUMABLE_CHANGES


def test_a_tar_cache_larger_than_the_machine_is_lowered_with_a_warning(tiny_recipe, tmp_path, monkeypatch, capsys):
    from foundation.data import tars
    from foundation.engine.trainer import Trainer

    monkeypatch.setattr(tars, "available_memory", lambda: 256 << 20)  # 256 MiB available
    trainer = Trainer(tiny_recipe(**{"train.shard_cache_mib": 1024, "run.dir": str(tmp_path / "run")}), progress=False)
    try:
        # one process, its background loader: together at most half of 256 MiB
        assert trainer.cache_bytes == 64 << 20
        err = capsys.readouterr().err
        assert "warning: train.shard_cache_mib=1024 is more than half of the memory available" in err
    finally:
        trainer.close()


def test_bf16_on_cpu_trains_in_bf16_and_metrics_record_the_precision(tiny_recipe, tmp_path):
    """``train.mixed_precision=bf16`` autocasts the CPU forward (docs/PERFORMANCE.md round 8: faster on CPUs
    with AMX, at a cost in test mAP on the default world): the run finishes with finite metrics, its weights
    differ from the float32 run of the same seed (the setting is not silently ignored), and metrics.json says
    which precision ran on which device."""
    import torch
    from safetensors.torch import load_file

    from foundation.workflows.train import train

    if torch.cuda.is_available():
        pytest.skip("checks the CPU resolution of train.mixed_precision")
    runs = {}
    for precision in ("auto", "bf16"):
        run = tmp_path / f"run-{precision}"
        path = train(tiny_recipe(**{"train.mixed_precision": precision, "run.dir": str(run)}), progress=False)
        runs[precision] = (json.loads(Path(path).read_text()), load_file(run / "best" / "model.safetensors"))
    (m32, w32), (m16, w16) = runs["auto"], runs["bf16"]
    assert (m32["device"], m32["mixed_precision"]) == ("cpu", "no")  # auto keeps float32 on a CPU
    assert (m16["device"], m16["mixed_precision"]) == ("cpu", "bf16")
    assert all(math.isfinite(v) for v in _metric_values(m16).values())
    assert all(w.dtype == torch.float32 for w in w16.values())  # autocast: the weights stay float32
    assert any(not w32[k].equal(w16[k]) for k in w32)



def _poison_gradient(trainer, steps: set[int]) -> None:
    """A NaN weight gradient (with a finite loss) at the given training steps, as oneDNN's convolution gave."""
    import torch

    param = next(p for p in trainer.core.parameters() if p.requires_grad and p.dim() == 2)
    calls = [0]

    def poison(grad):
        calls[0] += 1  # one backward per step (grad_accum 1)
        return torch.full_like(grad, float("nan")) if calls[0] in steps else grad

    param.register_hook(poison)


def test_a_step_with_a_non_finite_gradient_is_skipped_counted_and_kept_across_a_resume(tiny_recipe, caplog):
    import torch

    from foundation.engine.trainer import Trainer

    trainer = Trainer(tiny_recipe(), progress=False)
    _poison_gradient(trainer, {3, 7})
    with caplog.at_level("WARNING", logger="foundation.train"):
        trainer.fit()
    metrics = json.loads(trainer.test().read_text())
    assert metrics["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in trainer.core.parameters())
    assert math.isfinite(metrics["test"]["mAP"])
    assert any("step 5: 1 optimizer step(s) skipped" in r.getMessage() and "at step 3" in r.getMessage()
               for r in caplog.records)
    again = Trainer(tiny_recipe(), progress=False)
    again.resume()
    assert again.state.step == 20 and again.state.skipped_steps == 2


def test_more_non_finite_gradients_than_allowed_stop_the_run_with_finite_weights(tiny_recipe):
    import torch

    from foundation.core.errors import NonFiniteError
    from foundation.engine.trainer import Trainer

    trainer = Trainer(tiny_recipe(**{"train.max_skipped_steps": 1}), progress=False)
    _poison_gradient(trainer, {3, 4})
    with pytest.raises(NonFiniteError, match=r"^step 5: 2 optimizer steps had a non-finite gradient \(the first in "
                                             r"this process at step 3\), more than train.max_skipped_steps \(1\)"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.core.parameters())
