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

And by issue 13, item 5: ``model.label_head`` and ``model.alignment_basis`` are new model fields (every
whole-recipe hash); the synthetic
plugin's options gained ``semantics`` / ``label_offset`` (new synthetic options hashes), which at their
defaults are left out of the shard fingerprint (``fingerprint_omits_defaults``), so the synthetic shard
directories keep their names; ``recipes/synthetic_population.yaml`` is new.

And by issue 14 (stop 15): ``model.head`` is a new model field (every whole-recipe hash; runs made before
it resume with its default, the paper's MLP head). Dataset options, guidance options and shard directories
are unchanged.

And by issue 14 (stop 21): ``model.alignment_share`` is a new model field (the weight of the map shared in the
voxel grid by ``model.alignment: guidance-ridge-joint``; every whole-recipe hash; runs made before it resume
with its default, which no other alignment reads); ``recipes/hcp_aligned.yaml`` is new. Dataset options,
guidance options and shard directories are unchanged.

And by issue 14 (stop 23): ``model.alignment_pool_gib`` / ``model.alignment_pool_samples`` (the joint alignment's
memory and time budgets) and
``model.alignment_memory_gib`` (the alignment buffers' memory guard, 4 GiB as the constant it replaces) are new
model fields (every whole-recipe hash; runs made before them resume with their defaults, which only aligned
models read). Dataset options, guidance options and shard directories are
unchanged.

And by issue 18 (stop 25): ``train.shard_cache_mib`` (training tars kept in memory per loading process) is a new
train field (every whole-recipe hash; it changes no result and is resumable, ``RESUMABLE_CHANGES``, which bench
archives also ignore). Dataset options, guidance options and shard directories are unchanged.

And by issue 14 (stop 26): ``model.volume_input`` (``raw``, the default and what every run so far was fed, or
``standardize``: each sample's in-mask voxels standardised before the volume patchifier) is a new model field
(every whole-recipe hash; runs made before it resume with its default). Dataset options, guidance options and
shard directories are unchanged.

And by issue 14 (stop 27): ``model.volume_readout`` (``attention``, the paper's and the default, or ``spatial``: a
read-out with a weight per patch position added to the readout tokens) and ``model.volume_mixer`` (the public
code's position mixer in the ResNet patchifier, default off) are new model fields (every whole-recipe hash; runs
made before them resume with their defaults), and ``recipes/hcp.yaml`` sets ``volume_input: standardize`` and
``volume_readout: spatial`` (docs/RESULTS.md §4j). Dataset options, guidance options and shard directories are
unchanged.

And by issue 14 (stop 28): ``model.volume_linear_rank`` (0, the paper's and the default, or the rank of a linear
read-out of the voxels added to the readout tokens) is a new model field (every whole-recipe hash; runs made before
it resume with its default), and ``recipes/hcp.yaml`` sets it to 64 (docs/RESULTS.md §4j). Dataset options,
guidance options and shard directories are unchanged.

And by issue 14 (stop 29): ``train.max_skipped_steps`` (how many optimizer steps with a non-finite gradient may be
skipped before a run stops) is a new train field (every whole-recipe hash; it changes no result of a run that
never skips, and is resumable, ``RESUMABLE_CHANGES``, so a stopped run can go on with a higher limit). Dataset
options, guidance options and shard directories are unchanged.
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
    "hcp": {"recipe": "8c31d3adb5d506e5", "datasets.0.options": "2a873d918f907816",
            "guidance.clip": "c82c9e49fe2f1f15"},
    "hcp_aligned": {"recipe": "c1cfc8676fc036e9", "datasets.0.options": "2a873d918f907816",
                    "guidance.clip": "c82c9e49fe2f1f15"},
    "hcp_nsd": {"recipe": "4deebd2209ab708c", "datasets.0.options": "e01a14a955ea0772",
                "datasets.1.options": "2a873d918f907816", "guidance.clip": "c82c9e49fe2f1f15"},
    "nsd": {"recipe": "dc5bf18c60f89bde", "datasets.0.options": "dbae4797f76d8375",
            "guidance.clip": "c82c9e49fe2f1f15"},
    "synthetic": {"recipe": "d12afdae5bd57470", "datasets.0.options": "f7f8f3e608412373",
                  "guidance.planted": "44136fa355b3678a"},
    "synthetic_multi": {"recipe": "66f5f608065f1cca", "datasets.0.options": "f7f8f3e608412373",
                        "datasets.1.options": "f637f2c7467e92c3", "guidance.planted": "44136fa355b3678a"},
    "synthetic_population": {"recipe": "966ffb61fa1e0669", "datasets.0.options": "b27278c849fe7fd5",
                             "datasets.1.options": "eb4f85a35c310c2a", "guidance.planted": "44136fa355b3678a"},
    "synthetic_volume": {"recipe": "c1716a6ba36c9de6", "datasets.0.options": "b515df0bf8d9e1b9",
                         "guidance.planted": "44136fa355b3678a"},
}

#: shard directory names of the recipes whose plugins need no raw data
PINNED_SHARD_DIRS = {
    "synthetic": ["synthetic-b4bad43539b93fb1"],
    "synthetic_multi": ["synthetic-b4bad43539b93fb1", "synthetic_volume-db01ac490cabf5cc"],
    "synthetic_population": ["roi-049d8f4f3006a6b9", "volume-d45d4216b8d1be7c"],
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
