"""The content hashes of every shipped recipe, pinned as computed on main before the package renovation.

Shard directories and run directories are found again by these hashes, so a change to how recipes are
parsed or serialised (``to_dict``) that changes a hash would silently rebuild every user's shards.
If a recipe file in recipes/ is edited on purpose, update its row here in the same commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.data.shards import plan
from foundation.core.plugins import get_dataset_plugin, get_guidance_plugin
from foundation.core.recipe import from_dict, load_recipe, recipe_hash, to_dict

ROOT = Path(__file__).parents[2] / "recipes"

#: "recipe" rows re-pinned when ModelConfig gained alignment / alignment_dim / guidance_dims (issue 13): the
#: whole-recipe hash names no directory (shards are named by the dataset fingerprints, pinned below, unchanged)
PINNED = {
    "hcp": {"recipe": "a446a42afc04e99b", "datasets.0.options": "c40da0a432598dc2",
            "guidance.clip": "f07178370eab1ca6"},
    "hcp_nsd": {"recipe": "30193cc6a5eb43ae", "datasets.0.options": "d0fff92dc80a4352",
                "datasets.1.options": "c40da0a432598dc2", "guidance.clip": "f07178370eab1ca6"},
    "nsd": {"recipe": "65c6c3d86bc731a7", "datasets.0.options": "d0fff92dc80a4352",
            "guidance.clip": "f07178370eab1ca6"},
    "synthetic": {"recipe": "89c479a9617a7763", "datasets.0.options": "ff41f93d54e46e07",
                  "guidance.planted": "44136fa355b3678a"},
    "synthetic_multi": {"recipe": "f4a6ba04551ecabe", "datasets.0.options": "ff41f93d54e46e07",
                        "datasets.1.options": "68d82004e67e2b88", "guidance.planted": "44136fa355b3678a"},
    "synthetic_volume": {"recipe": "e53a76406cd7c189", "datasets.0.options": "279185fd58df02a1",
                         "guidance.planted": "44136fa355b3678a"},
}

#: shard directory names of the recipes whose plugins need no raw data
PINNED_SHARD_DIRS = {
    "synthetic": ["synthetic-b4bad43539b93fb1"],
    "synthetic_multi": ["synthetic-b4bad43539b93fb1", "synthetic_volume-db01ac490cabf5cc"],
    "synthetic_volume": ["synthetic_volume-c24415dfe0f569b8"],
}


def _hashes(path: Path) -> dict[str, str]:
    recipe = load_recipe(path)
    out = {"recipe": recipe_hash(recipe)}
    for i, cfg in enumerate(recipe.datasets):
        cls = get_dataset_plugin(cfg.plugin)
        out[f"datasets.{i}.options"] = recipe_hash(to_dict(from_dict(cls.Options, cfg.options)))
    for name in dict.fromkeys([recipe.guidance.low, recipe.guidance.high]):
        cls = get_guidance_plugin(name)
        out[f"guidance.{name}"] = recipe_hash(to_dict(from_dict(cls.Options, recipe.guidance.options.get(name, {}))))
    return out


def test_every_shipped_recipe_is_pinned() -> None:
    assert sorted(p.stem for p in ROOT.glob("*.yaml")) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_recipe_hashes_unchanged(name: str) -> None:
    assert _hashes(ROOT / f"{name}.yaml") == PINNED[name]


@pytest.mark.parametrize("name", sorted(PINNED_SHARD_DIRS))
def test_shard_directory_names_unchanged(name: str, tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / f"{name}.yaml", [f"shards.root={tmp_path / 'shards'}"])
    assert [b.directory.name for b in plan(recipe)] == PINNED_SHARD_DIRS[name]
