"""The `foundation` command line: plugins listing, clear errors for bad recipes, shard command."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.conftest import tiny_recipe_dict


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "foundation", *args], capture_output=True, text=True, cwd=cwd)


def test_plugins_lists_builtins_with_origin():
    proc = _run("plugins")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert rows["synthetic"].startswith("dataset")
    assert rows["planted"].startswith("guidance")
    assert "foundation 0.1.0" in rows["synthetic"]


def test_recipe_typo_is_a_clear_error(tmp_path):
    d = tiny_recipe_dict(tmp_path)
    d["train"]["lrr"] = 0.1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(d))
    proc = _run("train", str(path))
    assert proc.returncode == 2
    assert "train.lrr" in proc.stderr and "did you mean 'lr'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a bad recipe


def test_bad_override_type_names_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    proc = _run("shard", str(path), "train.batch_size=many")
    assert proc.returncode == 2
    assert "train.batch_size" in proc.stderr


def test_unknown_plugin_in_recipe_is_named(tmp_path):
    d = tiny_recipe_dict(tmp_path)
    d["datasets"][0]["plugin"] = "synthetik"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(d))
    proc = _run("shard", str(path))
    assert proc.returncode == 2
    assert "synthetik" in proc.stderr and "synthetic" in proc.stderr


def test_shard_command_reports_counts(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    proc = _run("shard", str(path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "'train': 108" in proc.stdout and "'test': 36" in proc.stdout  # 3 subjects × (36 train, 12 test)


def test_train_into_a_log_writes_plain_progress_lines_not_a_bar(tmp_path):
    """stderr is a pipe here, as in a batch job's log: no carriage-return bar states, a plain final line."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    proc = _run("train", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train tiny:")]
    assert lines and len(lines) <= 3, proc.stderr  # one per 30 s at most, and the closing one
    assert lines[-1].startswith("train tiny: 20/20 step (100%)")
