"""Shared fixtures: tiny recipes that train in seconds and write only under tmp_path."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_recipe_dict(tmp_path, **overrides) -> dict:
    """A recipe small enough to shard and train a few steps in about a second."""
    recipe = {
        "name": "tiny",
        "seed": 0,
        "datasets": [{"plugin": "synthetic", "name": "synthetic",
                      "options": {"n_subjects": 3, "stimuli_per_subject": 40, "shared_test": 12,
                                  "n_rois": 3, "token_dim": 8, "n_categories": 4}}],
        "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 16},
        "model": {"dim": 16, "depth": 1, "heads": 2, "head_hidden": 16, "dropout": 0.1},
        "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "checkpoint_every": 10,
                  "log_every": 5, "warmup_steps": 2, "shuffle_buffer": 32, "eval_batch_size": 16},
        "run": {"dir": str(tmp_path / "run")},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            recipe.setdefault(section, {})[field] = value
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def tiny_recipe(tmp_path):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe

    def make(**overrides):
        recipe = from_dict(Recipe, tiny_recipe_dict(tmp_path, **overrides))
        validate_recipe(recipe)
        return recipe

    return make
