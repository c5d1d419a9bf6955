"""One model across datasets of different kinds: shared Transformer and token table, per-dataset rest."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from tests.conftest import tiny_recipe_dict

VOLUME = {"plugin": "synthetic", "name": "vol", "weight": 1.0,
          "options": {"mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 60, "n_categories": 3}}


def two_dataset_recipe(tmp_path, **train):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe

    d = tiny_recipe_dict(tmp_path)
    d["datasets"][0]["weight"] = 3.0
    d["datasets"].append(VOLUME)
    d["model"]["volume_channels"] = [4, 8]
    d["train"].update(train)
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    return recipe


def test_joint_training_reports_every_dataset_and_subject(tmp_path):
    from foundation.engine.trainer import Trainer

    trainer = Trainer(two_dataset_recipe(tmp_path), progress=False)
    model = trainer.core
    assert sorted(model.adapters) == ["synthetic", "vol"]
    assert model.heads["synthetic"][-1].out_features == 4 and model.heads["vol"][-1].out_features == 3
    assert model.vocab == ["synthetic/sub-01", "synthetic/sub-02", "synthetic/sub-03", "vol/sub-01", "vol/sub-02"]
    assert tuple(model.subject_tokens.weight.shape) == (5, 2, 16)  # one table across datasets
    trainer.fit()
    metrics = json.loads(Path(trainer.test()).read_text())
    test = metrics["test"]
    assert set(test["per_dataset"]) == {"synthetic", "vol"}
    assert set(test["per_subject"]) == set(model.vocab)
    assert test["per_dataset"]["synthetic"]["n"] == 3 * 12 and test["per_dataset"]["vol"]["n"] == 2 * 12
    assert test["n"] == 3 * 12 + 2 * 12
    # the overall figure is the mean over datasets, not over samples
    assert abs(test["mAP"] - (test["per_dataset"]["synthetic"]["mAP"] + test["per_dataset"]["vol"]["mAP"]) / 2) < 1e-9


def test_steps_draw_datasets_by_recipe_weight_the_same_way_every_time(tmp_path):
    from foundation.engine.trainer import Trainer

    trainer = Trainer(two_dataset_recipe(tmp_path), progress=False)
    picks = [trainer._pick_dataset(step) for step in range(4000)]
    share = collections.Counter(picks)["synthetic"] / len(picks)
    assert abs(share - 0.75) < 0.03  # weights 3 : 1
    assert picks == [trainer._pick_dataset(step) for step in range(4000)]
