"""Every recipe shipped in recipes/ loads and validates; the paper settings are what Section 3.3 says."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.core.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_paper_settings():
    root = Path(__file__).parents[2] / "recipes"
    nsd, hcp = load_recipe(root / "nsd.yaml"), load_recipe(root / "hcp.yaml")
    assert (nsd.model.depth, nsd.model.dim, nsd.model.heads) == (24, 512, 8)
    assert (nsd.train.lr, nsd.train.batch_size) == (1e-4, 64)
    assert (nsd.loss.lambda_orth, nsd.loss.lambda_high, nsd.loss.lambda_low) == (0.001, 0.001, 0.0001)
    assert (hcp.model.depth, hcp.model.dim, hcp.train.lr, hcp.train.batch_size) == (2, 512, 1e-3, 64)
    assert (hcp.loss.lambda_orth, hcp.loss.lambda_high, hcp.loss.lambda_low) == (0.001, 0.001, 0.1)


def test_joint_recipes_share_one_model_across_dataset_kinds():
    root = Path(__file__).parents[2] / "recipes"
    joint = load_recipe(root / "hcp_nsd.yaml")
    assert [(d.plugin, d.id) for d in joint.datasets] == [("nsd", "nsd"), ("hcp", "hcp")]
    multi = load_recipe(root / "synthetic_multi.yaml")
    modes = [d.options["mode"] for d in multi.datasets]
    assert modes == ["roi", "volume"]
    assert multi.datasets[0].options["n_categories"] != multi.datasets[1].options["n_categories"]
