"""True 2-process DDP on CPU (gloo) against 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from tests.conftest import tiny_recipe_dict
from tests.workflows.test_multi_dataset import VOLUME

SCRIPT = Path(__file__).parents[2] / "foundation" / "train.py"


def _write(tmp_path: Path, name: str, *, datasets: str, **train) -> Path:
    d = tiny_recipe_dict(tmp_path)
    if datasets == "two":  # a step uses one dataset: DDP must tolerate the other's unused parameters
        d["datasets"].append(VOLUME)
        d["model"]["volume_channels"] = [4, 8]
    if datasets == "aligned":  # closed-form maps as buffers: fitted on every rank, not re-broadcast each step
        d["model"].update(alignment="guidance-ridge", alignment_dim=4)
    d["model"]["dropout"] = 0.0  # dropout masks are per process: keep the comparison exact
    d["train"].update(train)
    d["run"]["dir"] = str(tmp_path / f"run-{name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _launch(tmp_path: Path, recipe: Path, *, processes: int) -> dict:
    # CPU DDP over gloo on every machine: on one with GPUs, Accelerate would otherwise wait on them in its barriers
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    if processes > 1:
        launch += ["--multi_gpu"]  # with ACCELERATE_USE_CPU=1: gloo DDP on CPU (--cpu alone runs 1 process)
    proc = subprocess.run([*launch, "--main_process_port", "0", str(SCRIPT), str(recipe), "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / f"run-{recipe.stem}" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("datasets", ["one", "two", "aligned"])
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, datasets):
    # 1 process × 2 micro-batches of 8 and 2 processes × 1 batch of 8 read the same two streams
    one = _launch(tmp_path, _write(tmp_path, "one", datasets=datasets, grad_accum=2), processes=1)
    two = _launch(tmp_path, _write(tmp_path, "two", datasets=datasets, grad_accum=1), processes=2)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    for split in ("val", "test"):
        assert two[split]["n"] == one[split]["n"]  # every sample evaluated exactly once across ranks
        for key in ("mAP", "AUC", "hamming"):
            assert two[split][key] == pytest.approx(one[split][key], abs=1e-5), (split, key)
        assert set(two[split]["per_subject"]) == set(one[split]["per_subject"])
    a = load_file(str(tmp_path / "run-one" / "best" / "model.safetensors"))
    b = load_file(str(tmp_path / "run-two" / "best" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a) < 1e-5  # bool flags too
