"""The SRM baseline on a tiny shared-movie world, through BrainIAK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundation.core.errors import DataError

pytest.importorskip("brainiak.funcalign.srm", reason="the srm extra is not installed")


def _recipe(tmp_path, options, name="vol"):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict

    return from_dict(Recipe, {"name": "srm", "datasets": [{"plugin": "synthetic", "name": name, "options": options}],
                              "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 64},
                              "run": {"dir": str(tmp_path / "run")}})


def test_srm_decodes_a_shared_movie_and_writes_run_metrics(tmp_path):
    from foundation.workflows.srm import run_srm

    options = {"mode": "volume", "n_subjects": 3, "grid": [6, 7, 6], "seconds": 120, "n_categories": 4}
    metrics = json.loads(Path(run_srm(_recipe(tmp_path, options), features=[3, 10], progress=False)).read_text())
    test = metrics["test"]
    assert set(test["per_subject"]) == {"vol/sub-01", "vol/sub-02", "vol/sub-03"}
    assert test["n"] == 3 * 24  # the last 20 % of 120 s, every subject
    assert metrics["srm"]["chosen"]["vol"]["features"] in (3, 10)
    assert test["mAP"] > test["chance_mAP"] + 0.1  # the shared space carries the movie's labels


def test_srm_refuses_subjects_without_shared_training_stimuli(tmp_path):
    from foundation.workflows.srm import run_srm

    options = {"n_subjects": 2, "stimuli_per_subject": 30, "shared_test": 6, "n_rois": 2, "token_dim": 4}
    with pytest.raises(DataError, match="share 0"):
        run_srm(_recipe(tmp_path, options, name="roi"), progress=False)
