"""NIfTI images given to ``foundation predict`` for a volume dataset (issue 16.10 and 16.14).

A dataset plugin that reads NIfTI records each subject's affine in ``index.json``; an image whose affine
differs (a flipped x axis: the right shape, the wrong brain side) is refused naming the file and both
affines.  A grid so small that a GroupNorm sees one value per group predicts one volume (or with
``--batch-size 1``) exactly as it does inside a larger batch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from foundation.core.errors import DataError

from .conftest import expect, note

#: the recorded affine: 2 mm voxels, x running right-to-left as in radiological MNI files
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def _nifti_volumes():
    from foundation_synthetic.plugin import SyntheticDataset

    class NiftiVolumes(SyntheticDataset):
        """The synthetic volume world, as if read from NIfTI files with :data:`AFFINE`."""

        name = "robustness-nifti-volumes"

        def affine(self, subject: str) -> np.ndarray:
            return AFFINE

    return NiftiVolumes


def _train(root: Path, plugin: str):
    """A 2-step volume run on a 4×4×4 grid: after the two stride-2 convolutions the feature map is 1×1×1
    and the GroupNorm of its 8 channels has one channel (one value) per group."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(root, **{"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2})
    d["datasets"][0].update(plugin=plugin, options={"mode": "volume", "n_subjects": 2, "grid": [4, 4, 4],
                                                    "seconds": 60, "n_categories": 4})
    d["model"]["volume_channels"] = [4, 8]
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    train(recipe, progress=False)
    return root / "run", next((root / "shards").glob("synthetic-*"))


def _volumes(shards: Path, n: int) -> np.ndarray:
    """``n`` volumes ``(X, Y, Z, n)`` of subject sub-02, from its test samples (NaN outside the brain)."""
    from foundation.data.index import read_index
    from foundation.data.loader import decode
    from foundation.data.tars import read_tars

    index = read_index(shards)
    tars = index.shards("test", {"sub-02"})
    samples = [decode(s) for s in read_tars([{"url": str(p)} for p, _, _ in tars], expected={})][:n]
    mask = index.mask("sub-02")
    vol = np.full((*index.data["grid"], len(samples)), np.nan, np.float32)
    vol.reshape(-1, len(samples))[np.flatnonzero(mask)] = np.stack([s["fmri"] for s in samples], 1)
    return vol


def test_nifti_with_another_affine_is_refused(tmp_path, fresh_plugins, caplog, request):
    import nibabel as nib

    from foundation.workflows.predict import predict_run

    fresh_plugins(_nifti_volumes())
    run_dir, shards = _train(tmp_path, "robustness-nifti-volumes")
    assert json.loads((shards / "index.json").read_text())["affines"]["sub-02"] == AFFINE.tolist()
    vol = _volumes(shards, 4)
    good = tmp_path / "sub-02.nii.gz"
    nib.save(nib.Nifti1Image(vol, AFFINE), good)
    assert len(predict_run(run_dir, good, subject="sub-02", progress=False)) == 4

    flipped = AFFINE.copy()
    flipped[0, 0] = 2.0  # the x axis flipped: same shape, left and right swapped
    bad = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(vol, flipped), bad)
    expect("NIfTI with a flipped x axis in its affine (predict)", DataError,
           lambda: predict_run(run_dir, bad, subject="sub-02", progress=False), bad,
           "[[2, 0, 0, 90], [0, 2, 0, -126]", "[[-2, 0, 0, 90], [0, 2, 0, -126]", shards / "index.json",
           request=request)

    # shards without a recorded affine (built before it was, or by a plugin that reads no NIfTI): the
    # shape alone is checked, and predict says so
    index = json.loads((shards / "index.json").read_text())
    del index["affines"]
    (shards / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="foundation.predict"):
        assert len(predict_run(run_dir, bad, subject="sub-02", progress=False)) == 4
    message = next(r.getMessage() for r in caplog.records if "affine" in r.getMessage())
    note("NIfTI for shards that record no affine (predict)", "warning", message, bad,
         "only the image's shape is checked", request=request)


def test_one_volume_through_a_one_value_per_group_norm(tmp_path, request):
    """Issue 16.14: torch's GroupNorm refused a batch of one sample whose groups hold one value (a raw
    ``ValueError: Expected more than 1 value per channel``); it now predicts what a larger batch gives."""
    import nibabel as nib

    from foundation.workflows.predict import predict_run

    run_dir, shards = _train(tmp_path, "synthetic")
    vol = _volumes(shards, 3)
    path = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    together = predict_run(run_dir, path, subject="sub-02", batch_size=3, progress=False)
    alone = predict_run(run_dir, path, subject="sub-02", batch_size=1, progress=False)
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(vol[..., 0], np.eye(4)), one)  # a single 3-D volume
    single = predict_run(run_dir, one, subject="sub-02", progress=False)

    def probs(records):
        return np.array([list(r["probabilities"].values()) for r in records])

    np.testing.assert_allclose(probs(alone), probs(together), atol=1e-6)
    np.testing.assert_allclose(probs(single), probs(together)[:1], atol=1e-6)
    note("one volume / --batch-size 1 through a GroupNorm of one value per group (predict)", "works",
         "predicted; the probabilities equal those of the same volumes in a batch of 3 (within 1e-6)",
         request=request)
