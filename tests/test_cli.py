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


TOYBOLD = '''
import numpy as np
from foundation.core.api import DatasetInfo, DatasetPlugin, Sample
from foundation.core.hookspecs import hookimpl

class ToyBold(DatasetPlugin):
    name = "toybold"

    def info(self):
        return DatasetInfo(kind="roi", label_names=("a",), subjects=tuple(np.array(["sub-01"])), token_shape=(1, 2))

    def samples(self, subject):
        labels = {"img0001": 1}
        for i, stim in enumerate(np.array(["img0001", "img0046"])):
            yield Sample(subject=subject, index=i, split="train", stimulus=stim, fmri=np.zeros((1, 2)),
                         labels=np.array([labels[stim]]))

    def stimuli(self, ids):
        return iter(())

@hookimpl
def foundation_dataset_plugins():
    return [ToyBold]
'''


def test_a_plugin_exception_names_its_line_and_v_prints_the_chain(tmp_path, monkeypatch, capsys):
    """The one-line error names the plugin's file and line with plain ids; -v / --traceback add the
    full chained traceback (the plugin's own frames), before or after the command name."""
    from foundation.core import plugins
    from foundation.cli import main

    (tmp_path / "toybold_pkg.py").write_text(TOYBOLD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toybold_pkg", raising=False)
    monkeypatch.setattr(plugins, "_manager", None)
    plugins.register_module("toybold_pkg")
    d = tiny_recipe_dict(tmp_path)
    d["datasets"] = [{"plugin": "toybold"}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(d))

    assert main(["shard", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert "dataset plugin 'toybold'" in line and "reading subject 'sub-01' after sample toybold/sub-01/0000000" in line
    assert "KeyError: 'img0046'" in line and "np.str_" not in line
    assert f"(at {tmp_path / 'toybold_pkg.py'}:" in line and " in samples)" in line
    assert line.endswith("(rerun with -v for the full traceback)")

    for argv in (["-v", "shard", str(path), "--no-progress"], ["shard", str(path), "--traceback", "--no-progress"],
                 ["shard", "-v", str(path), "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err
        assert "The above exception was the direct cause of the following exception" in err
        assert 'toybold_pkg.py", line' in err and "labels=np.array([labels[stim]])" in err
        assert err.splitlines()[-1].startswith("error: dataset plugin 'toybold'")
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


def test_a_busy_run_directory_exits_with_the_temporary_failure_status(tmp_path):
    """A command refused because another process holds its run directory exits 75 (EX_TEMPFAIL: try again
    later), other errors 2, so that scripts and ``foundation bench`` can tell "wait" from "fix"."""
    from foundation.core.errors import BusyError
    from foundation.core.locks import hold

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    lock = hold(tmp_path / "run", what="run directory")
    try:
        proc = _run("train", str(path), "--no-progress")
    finally:
        lock.release()
    assert proc.returncode == BusyError.exit_status == 75, proc.stderr
    assert "is in use by" in proc.stderr and "Traceback" not in proc.stderr
