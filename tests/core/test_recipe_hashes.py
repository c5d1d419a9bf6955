"""The content hashes of every shipped recipe, pinned as computed on main before the package renovation.

Shard directories and run directories are found again by these hashes, so a change to how recipes are
parsed or serialised (``to_dict``) that changes a hash would silently rebuild every user's shards.
If a recipe file in recipes/ is edited on purpose, update its row here in the same commit.

Updated on purpose by issue 14: ``model.patchifier`` / ``model.volume_blocks`` are new model fields (every
recipe hash changes, since the hash covers the whole model config), and the ``hcp`` options gained
``split`` / ``frames_cache`` / ``empty_text`` with ``segments: khosla2020`` in the shipped recipes (new
HCP options hash: its shards hold a different split). Dataset options of the other plugins, guidance
options and the synthetic shard directories are unchanged.

Also updated on purpose by issue 15 (``recipes/nsd.yaml``, ``hcp.yaml``, ``hcp_nsd.yaml`` name CLIP ViT-B/16
with ``clip_value: 1.5`` in ``guidance.options.clip``, HCP's ``movie_frames``, NSD's ``test_repeats``) and
issue 13 (``model.alignment`` / ``alignment_dim`` / ``guidance_dims``: every whole-recipe hash).

And by issue 18: ``train.background_loader`` is a new train field (every whole-recipe hash; it changes no
result and is resumable, see ``RESUMABLE_CHANGES``).  Dataset options, guidance options and shard
directories are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.data.shards import plan
from foundation.core.plugins import get_dataset_plugin, get_guidance_plugin
from foundation.core.recipe import from_dict, load_recipe, recipe_hash, to_dict

ROOT = Path(__file__).parents[2] / "recipes"

#: the whole-recipe hash names no directory (shards are named by the dataset fingerprints, pinned below)
PINNED = {
    "hcp": {"recipe": "0a174610fe56dcb1", "datasets.0.options": "2a873d918f907816",
            "guidance.clip": "c82c9e49fe2f1f15"},
    "hcp_nsd": {"recipe": "a4f716718623a02c", "datasets.0.options": "e01a14a955ea0772",
                "datasets.1.options": "2a873d918f907816", "guidance.clip": "c82c9e49fe2f1f15"},
    "nsd": {"recipe": "8c0ab317d6602688", "datasets.0.options": "dbae4797f76d8375",
            "guidance.clip": "c82c9e49fe2f1f15"},
    "synthetic": {"recipe": "02be182cbab9a0ca", "datasets.0.options": "ff41f93d54e46e07",
                  "guidance.planted": "44136fa355b3678a"},
    "synthetic_multi": {"recipe": "b431a9b643759cc3", "datasets.0.options": "ff41f93d54e46e07",
                        "datasets.1.options": "68d82004e67e2b88", "guidance.planted": "44136fa355b3678a"},
    "synthetic_volume": {"recipe": "e821d3f9c9844f69", "datasets.0.options": "279185fd58df02a1",
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
