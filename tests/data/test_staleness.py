"""Stale shards: a reused shard directory says when and by what it was built, warns when the plugin's
code or its raw files changed since, and ``--rebuild`` builds it again (foundation.data.staleness)."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from foundation.core import plugins
from foundation.cli import main

PLUGIN = textwrap.dedent('''
    """A dataset read from ROOT/betas.npy (N, 2, 3) and a guidance hashing stimulus ids."""
    import hashlib
    import numpy as np
    from foundation.core.api import DatasetInfo, DatasetPlugin, GuidanceFeatures, GuidancePlugin, Sample, Stimulus
    from foundation.core.hookspecs import hookimpl

    class Betas(DatasetPlugin):
        name = "stale-betas"

        def info(self):
            return DatasetInfo(kind="roi", label_names=("a", "b"), subjects=("s1",), token_shape=(2, 3))

        def samples(self, subject):
            betas = np.load(self.root / "betas.npy")
            for i, x in enumerate(betas):
                yield Sample(subject=subject, index=i, split=("train", "train", "val", "test")[i % 4],
                             stimulus=f"im{i % 5}", fmri=x, labels=np.array([i % 2, (i + 1) % 2]))

        def stimuli(self, ids):
            return (Stimulus(id=i) for i in ids)

    class Hash(GuidancePlugin):
        name = "stale-hash"

        def encode(self, stimuli):
            rows = [np.frombuffer(hashlib.sha256(s.id.encode()).digest()[:6], np.uint8) / 255 for s in stimuli]
            f = np.stack(rows).astype(np.float32)
            return GuidanceFeatures(low=f[:, :3], high=f[:, 3:])

    @hookimpl
    def foundation_dataset_plugins():
        return [Betas]

    @hookimpl
    def foundation_guidance_plugins():
        return [Hash]
''')


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A plugin package ``stale_pkg`` in tmp_path (named explicitly), its raw file and a recipe."""
    pkg = tmp_path / "src" / "stale_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in ("stale_pkg", "stale_pkg.plugin"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(plugins, "_manager", None)
    plugins.register_module("stale_pkg.plugin")
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "betas.npy", np.random.default_rng(0).standard_normal((12, 2, 3)).astype(np.float32))
    recipe = {"name": "stale", "datasets": [{"plugin": "stale-betas", "root": str(raw)}],
              "guidance": {"low": "stale-hash", "high": "stale-hash"},
              "shards": {"root": str(tmp_path / "shards")},
              "model": {"dim": 8, "depth": 1, "heads": 2, "head_hidden": 8},
              "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
              "run": {"dir": str(tmp_path / "run")}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, raw, pkg / "plugin.py"


def _shard(path: Path, capsys, *extra: str) -> tuple[str, str]:
    capsys.readouterr()
    assert main(["shard", str(path), "--no-progress", *extra]) == 0
    out = capsys.readouterr().out
    (line,) = out.splitlines()
    directory = line.split()[1]
    return line, directory


def test_reuse_says_when_and_by_what_and_warns_on_edits(setup, capsys, caplog) -> None:
    path, raw, code = setup
    caplog.set_level(logging.WARNING, logger="foundation")
    line, directory = _shard(path, capsys)
    assert line.endswith("(built now)")
    built = json.loads((Path(directory) / "index.json").read_text())["built"]
    assert built["dataset_plugin"]["name"] == "stale-betas" and built["raw"]["files"] == 1
    assert built["dataset_plugin"]["origin"] == "module stale_pkg.plugin (named explicitly)"

    line, again = _shard(path, capsys)
    assert again == directory
    from foundation.data.staleness import built_at

    assert built_at(Path(directory)).startswith("20") and "Z" in built_at(Path(directory))
    assert f"(reused: built {built_at(Path(directory))} by dataset plugin 'stale-betas' version 1" in line
    assert not [r for r in caplog.records if "stale" in r.getMessage()]  # nothing changed: no warning

    # new raw data of the same size, and an edited plugin: same directory, two warnings
    np.save(raw / "betas.npy", np.ones((12, 2, 3), np.float32))
    os.utime(raw / "betas.npy", ns=(1, 1))  # a different mtime even on a coarse clock
    code.write_text(code.read_text() + "\n# edited\n")
    _, again = _shard(path, capsys)
    assert again == directory  # the directory hash covers declarations, not code or data
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("may be stale" in w and "raw files under" in w and str(raw) in w for w in warnings), warnings
    edited = "code of dataset plugin 'stale-betas' and guidance plugin 'stale-hash' changed"  # one package
    assert any("may be stale" in w and edited in w and "stale_pkg" in w for w in warnings), warnings
    assert all("--rebuild" in w for w in warnings if "may be stale" in w)

    # --rebuild builds it again (the new data is in the shards) and the warnings stop
    caplog.clear()
    line, again = _shard(path, capsys, "--rebuild")
    assert again == directory and line.endswith("(built now)")
    with tarfile.open(next(Path(directory, "train").glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("fmri.npy"))
        fmri = np.load(io.BytesIO(tar.extractfile(member).read()))
    np.testing.assert_array_equal(fmri, np.ones((2, 3), np.float16))
    caplog.clear()
    _shard(path, capsys)
    assert not [r for r in caplog.records if "may be stale" in r.getMessage()]


def test_train_rebuild_refuses_a_run_with_checkpoints(setup, tmp_path: Path, capsys) -> None:
    path, _, _ = setup
    from foundation.engine.checkpoint import STATE_NAME

    from foundation.engine.trainer import RUN_MARKER

    step = tmp_path / "run" / "checkpoints" / "step-10"
    step.mkdir(parents=True)
    (step / STATE_NAME).write_text(json.dumps({"step": 10}))
    (tmp_path / "run" / RUN_MARKER).write_text("{}")  # a run directory foundation made (issue 16's marker)
    assert main(["train", str(path), "--no-progress", "--rebuild"]) == 2
    err = capsys.readouterr().err
    assert "--rebuild" in err and str(tmp_path / "run") in err and "run.dir=" in err
