"""docs/PLUGINS.md stays true: its quick-start package and its NetworkGuidance example, copied from the
page as a newcomer would, pass `foundation plugins --check` and shard."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from foundation.core import plugins

DOC = Path(__file__).parents[2] / "docs" / "PLUGINS.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (found,) = [b for b in blocks if marker in b]
    return found


@pytest.fixture
def doc_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The quick start's toy_plugin and the TinyNet example as one package named explicitly, plus data."""
    pkg = tmp_path / "src" / "toy_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(_block("class ToyDataset"))
    (pkg / "net.py").write_text(_block("class TinyNet") + "\n\nfrom foundation.core.hookspecs import hookimpl\n\n"
                                "@hookimpl\ndef foundation_guidance_plugins():\n    return [TinyNet]\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in ("toy_plugin", "toy_plugin.plugin", "toy_plugin.net"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(plugins, "_manager", None)
    plugins.register_module("toy_plugin.plugin")
    plugins.register_module("toy_plugin.net")

    root = tmp_path / "data"  # the layout the quick start describes
    (root / "sub-01").mkdir(parents=True)
    stimuli = [f"img{i:03d}" for i in range(30)] + [f"shared{i}" for i in range(6)]
    with open(root / "labels.csv", "w") as fh:
        fh.write("stimulus,animal,vehicle\n" + "".join(f"{s},{i % 2},{i % 3 == 0:d}\n" for i, s in enumerate(stimuli)))
    np.save(root / "sub-01" / "betas.npy", np.random.default_rng(0).standard_normal((36, 3, 4)).astype(np.float32))
    (root / "sub-01" / "stimuli.txt").write_text("\n".join(stimuli))
    return tmp_path


def test_quick_start_package_checks_and_shards(doc_package: Path) -> None:
    from foundation.data.shards import build_shards
    from foundation.workflows.plugin_check import check_plugin
    from foundation.core.recipe import load_recipe

    lines = check_plugin("toy", root=doc_package / "data")
    assert "samples('sub-01'): the first 4 pass the shard checks" in "\n".join(lines)
    assert check_plugin("toy-hash")[-1].startswith("ok: 'toy-hash' passed")
    recipe = {"datasets": [{"plugin": "toy", "root": str(doc_package / "data")}],
              "guidance": {"low": "toy-hash", "high": "toy-hash"}, "shards": {"root": str(doc_package / "shards")}}
    path = doc_package / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (index,) = build_shards(load_recipe(path), progress=False).values()
    counts = {split: sum(v.values()) for split, v in index.data["counts"].items()}
    assert counts["test"] == 6 and counts["train"] + counts["val"] == 30


def test_network_guidance_example_runs(doc_package: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from foundation.core.errors import WeightsMissingError
    from foundation.workflows.plugin_check import check_plugin

    with pytest.raises(WeightsMissingError, match="tiny-net.safetensors not found"):
        check_plugin("tiny-net", samples=2)
    save_file(torch.nn.Linear(3, 8).state_dict(), str(tmp_path / "tiny.safetensors"))
    recipe = {"datasets": [{"plugin": "synthetic", "options": {"n_subjects": 2, "stimuli_per_subject": 20,
                                                               "shared_test": 6, "n_categories": 4}}],
              "guidance": {"low": "tiny-net", "high": "tiny-net",
                           "options": {"tiny-net": {"weights": str(tmp_path / "tiny.safetensors")}}}}
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(recipe))
    lines = check_plugin("tiny-net", recipe_path=path, samples=2)
    assert "encode(): low (2, 3), high (2, 8)" in "\n".join(lines) and "'random_weights': False" in lines[-2]
