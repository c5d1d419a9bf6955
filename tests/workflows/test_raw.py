"""``foundation predict --raw``: raw scans → tokens through the dataset plugin's ``encode_raw``
(foundation.workflows.raw), on the worked example of docs/PLUGINS.md (tests/external_plugin)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from foundation.core import plugins
from foundation.core.errors import DataError, PluginError

EXTERNAL_PLUGIN = Path(__file__).parents[1] / "external_plugin"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """A few training steps on ``example-dataset`` (the worked example, named explicitly)."""
    from foundation.core.recipe import load_recipe
    from foundation.workflows.train import train

    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(EXTERNAL_PLUGIN))
    mp.setattr(plugins, "_manager", None)
    plugins.register_module("foundation_example_plugin.plugin")
    tmp = tmp_path_factory.mktemp("example")
    recipe = {"name": "example", "seed": 3,
              "datasets": [{"plugin": "example-dataset", "name": "example",
                            "options": {"n_subjects": 2, "n_samples": 24}}],
              "guidance": {"low": "example-guidance", "high": "example-guidance"},
              "shards": {"root": str(tmp / "shards")},
              "model": {"dim": 16, "depth": 1, "heads": 2, "head_hidden": 16},
              "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 4, "lr": 0.03},
              "run": {"dir": str(tmp / "run")}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    train(load_recipe(path), progress=False)
    yield tmp
    mp.undo()


def _example_plugin():
    D = plugins.get_dataset_plugin("example-dataset")
    return D(D.Options(n_subjects=2, n_samples=24), root=None, seed=3)


def test_raw_scans_decode_exactly_as_their_shards(example_run: Path) -> None:
    from foundation.workflows.predict import predict_run

    run, shards = example_run / "run", next((example_run / "shards").glob("example-*"))
    assert sorted(p.name for p in (shards / "example_pca").iterdir()) == ["ex1.npz", "ex2.npz"]
    raw = _example_plugin().raw("ex2")  # (24, V) voxels: what a lab would have for new scans
    assert raw.shape == (24, sum(5 + (2 + k) % 4 for k in range(3)))
    np.save(example_run / "ex2.npy", raw)
    from_raw = predict_run(run, example_run / "ex2.npy", subject="ex2", raw=True, progress=False)
    from_shards = predict_run(run, shards, subject="ex2", progress=False)
    by_index = {int(r["key"].rsplit("/", 1)[1]): r for r in from_shards}
    assert len(from_raw) == len(by_index) == 24
    for r in from_raw:
        other = by_index[r["key"]]
        assert r["subject"] == other["subject"] == "example/ex2"
        np.testing.assert_allclose(list(r["probabilities"].values()), list(other["probabilities"].values()),
                                   rtol=0, atol=1e-6)


def test_raw_input_errors_name_the_culprit(example_run: Path) -> None:
    from foundation.workflows.predict import predict_run

    run = example_run / "run"
    np.save(example_run / "bad.npy", np.zeros((3, 7), np.float32))
    with pytest.raises(DataError, match=r"raw scans of 'ex1' have shape \(3, 7\)"):
        predict_run(run, example_run / "bad.npy", subject="ex1", raw=True, progress=False)
    tokens = _example_plugin().encode_raw("ex1", _example_plugin().raw("ex1"),
                                          artifacts=next((example_run / "shards").glob("example-*")))
    np.save(example_run / "tokens.npy", tokens)  # tokens are not raw: the hint says so
    with pytest.raises(DataError, match=r"shape \(3, 7\).*--raw"):
        predict_run(run, example_run / "bad.npy", subject="ex1", progress=False)
    assert len(predict_run(run, example_run / "tokens.npy", subject="ex1", progress=False)) == 24


def test_a_plugin_without_encode_raw_is_named(example_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foundation.workflows.predict import predict_run

    D = plugins.get_dataset_plugin("example-dataset")
    monkeypatch.setattr(D, "encode_raw", plugins.DatasetPlugin.encode_raw)
    np.save(example_run / "raw1.npy", _example_plugin().raw("ex1"))
    with pytest.raises(PluginError, match="'example-dataset'.*does not implement encode_raw"):
        predict_run(example_run / "run", example_run / "raw1.npy", subject="ex1", raw=True, progress=False)
