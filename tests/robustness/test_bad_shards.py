"""Bad shards met by `foundation train`: corrupt, truncated, incomplete or inconsistent tars and index.json.

One pristine shard build is copied for every case; the copy is damaged and trained on.  The error must
be a :class:`ShardError` naming the tar (and the sample and member where there is one), and the run
must leave nothing half-written: no temporary file, no metrics.json, no partial checkpoint.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from foundation.core.config import Recipe
from foundation.core.errors import RecipeError, ShardError
from foundation.core.recipe import from_dict, validate_recipe
from tests.conftest import tiny_recipe_dict
from tests.data.conftest import rewrite_tar, tar_keys

from .conftest import assert_nothing_half_written, expect, unseal_index


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe's shards, built once (read-only: tests damage copies)."""
    from foundation.data.shards import build_shards

    root = tmp_path_factory.mktemp("pristine")
    build_shards(_recipe(root, root / "shards"), progress=False)
    return root / "shards"


def _recipe(tmp_path: Path, shards: Path) -> Recipe:
    d = tiny_recipe_dict(tmp_path)
    d["shards"]["root"] = str(shards)
    d["train"].update(steps=4, eval_every=2, checkpoint_every=2, log_every=2)
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    return recipe


@pytest.fixture
def damaged(pristine: Path, tmp_path: Path):
    """``(shard directory of the copy, train function)``: damage the copy, then call ``train()``."""
    from foundation.workflows.train import train

    shards = tmp_path / "shards"
    shutil.copytree(pristine, shards)
    directory = next(shards.glob("synthetic-*"))
    unseal_index(directory)  # the per-sample checks, as for shards built before checksums (test_checksums.py)
    return directory, lambda: train(_recipe(tmp_path, shards), progress=False)


def _val_tar(directory: Path) -> Path:
    """A validation tar: read in full by the first evaluation (step 2), before the first checkpoint."""
    return min((directory / "val").glob("sub-02-*.tar"))


def _after(tmp_path: Path, *damaged: Path) -> None:
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # the failure came before the first checkpoint
    assert_nothing_half_written(tmp_path, skip=damaged)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_corrupt_tar(damaged, tmp_path, request):
    directory, run = damaged
    tar = _val_tar(directory)
    tar.write_bytes(np.random.default_rng(0).bytes(tar.stat().st_size))
    expect("corrupt tar", ShardError, run, tar, request=request)
    _after(tmp_path, tar)


def test_truncated_tar(damaged, tmp_path, request):
    directory, run = damaged
    tar = _val_tar(directory)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    expect("truncated tar (inside a member)", ShardError, run, tar, request=request)
    _after(tmp_path, tar)


def test_tar_cut_at_a_member_boundary_disagrees_with_index(damaged, tmp_path, request):
    """Python's tar reader stops silently at a clean cut: the count in index.json catches it."""
    directory, run = damaged
    tar = _val_tar(directory)
    keep = set(tar_keys(tar)[:2])
    rewrite_tar(tar, lambda name, payload: payload if name.split(".", 1)[0] in keep else None)
    expect("tar holding fewer samples than index.json lists", ShardError, run, tar,
           "holds 2 samples but index.json lists", request=request)
    _after(tmp_path, tar)


def test_shard_with_a_missing_member(damaged, tmp_path, request):
    directory, run = damaged
    tar = _val_tar(directory)
    key = tar_keys(tar)[1]
    rewrite_tar(tar, lambda name, payload: None if name == f"{key}.low.npy" else payload)
    expect("shard with a missing member", ShardError, run, tar, f"sample {key}", "low.npy", request=request)
    _after(tmp_path, tar)


def test_index_counts_disagree_with_its_shard_list(damaged, tmp_path, request):
    directory, run = damaged
    path = directory / "index.json"
    data = json.loads(path.read_text())
    data["counts"]["val"]["sub-01"] += 1
    path.write_text(json.dumps(data))
    expect("index.json whose counts disagree with its shard list", ShardError, run, path, "'val'", request=request)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    assert_nothing_half_written(tmp_path, skip=(path,))


def test_index_lists_a_tar_that_is_missing(damaged, tmp_path, request):
    directory, run = damaged
    tar = directory / "train" / "sub-03-0001.tar"
    tar.unlink()
    expect("index.json listing a tar that does not exist", ShardError, run, directory / "index.json", tar,
           request=request)
    assert not (tmp_path / "run").exists()
    assert_nothing_half_written(tmp_path)


def test_index_json_that_is_not_json(damaged, tmp_path, request):
    directory, run = damaged
    path = directory / "index.json"
    path.write_text(path.read_text()[:200])  # half an index, as only a damaged copy could have
    expect("index.json cut short (not JSON)", ShardError, run, path, "is not valid JSON", request=request)
    assert not (tmp_path / "run").exists()
    assert_nothing_half_written(tmp_path, skip=(path,))


def test_label_vector_of_the_wrong_width_in_a_shard(damaged, tmp_path, request):
    directory, run = damaged
    tar = _val_tar(directory)
    key = tar_keys(tar)[0]
    rewrite_tar(tar, lambda name, payload: _npy(np.zeros(7, np.uint8)) if name == f"{key}.labels.npy" else payload)
    expect("label vector of the wrong width in a shard", ShardError, run, tar, f"sample {key}", "(7,) labels",
           "declares 4", request=request)
    _after(tmp_path, tar)


def test_fmri_of_the_wrong_shape_in_a_shard(damaged, tmp_path, request):
    directory, run = damaged
    tar = _val_tar(directory)
    key = tar_keys(tar)[0]
    rewrite_tar(tar, lambda name, payload: _npy(np.zeros((3, 9), np.float16)) if name == f"{key}.fmri.npy"
                else payload)
    expect("fMRI of the wrong shape in a shard", ShardError, run, tar, f"sample {key}", "(3, 9)", "(3, 8)",
           request=request)
    _after(tmp_path, tar)


def test_fmri_of_the_wrong_dtype_in_a_shard(damaged, tmp_path, request):
    directory, run = damaged
    tar = _val_tar(directory)
    key = tar_keys(tar)[0]
    rewrite_tar(tar, lambda name, payload: _npy(np.full((3, 8), "x")) if name == f"{key}.fmri.npy" else payload)
    expect("fMRI of the wrong dtype in a shard", ShardError, run, tar, f"sample {key}", "fmri.npy", "<U1",
           request=request)
    _after(tmp_path, tar)


def test_empty_validation_split_refused_before_training(tmp_path, request):
    """Issue 16.13: a dataset too small for a validation split (``stimuli_per_subject: 5``) used to crash at
    the first evaluation with ``need at least one array to stack``; it is refused before anything trains."""
    from foundation.core.config import Recipe
    from foundation.core.errors import ShardError
    from foundation.core.recipe import from_dict
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(tmp_path)
    d["datasets"][0]["options"].update(stimuli_per_subject=5, shared_test=2)
    d["train"].update(steps=4, eval_every=2, checkpoint_every=2, log_every=2, batch_size=2)
    recipe = from_dict(Recipe, d)
    expect("empty validation split", ShardError, lambda: train(recipe, progress=False), "the val split",
           "'synthetic'", "sub-01", tmp_path / "shards", request=request)
    assert not (tmp_path / "run").exists()
    assert_nothing_half_written(tmp_path)


def test_batch_larger_than_the_training_set(tmp_path, request):
    """Issue 16 ("also accepted"): ``train.batch_size`` larger than the training set is named, not run."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(tmp_path)
    d["train"].update(steps=4, eval_every=2, checkpoint_every=2, log_every=2, batch_size=4096)
    recipe = from_dict(Recipe, d)
    expect("batch larger than the training set", RecipeError, lambda: train(recipe, progress=False),
           "train.batch_size: 4096", "'synthetic'", request=request)
    assert not (tmp_path / "run").exists()


def test_nan_in_a_validation_sample(damaged, tmp_path, request):
    """Issue 16.12: a NaN in one val sample used to end in ``probs must be probabilities in [0, 1]``,
    naming nothing; it is stopped when read, naming the shard, the sample and the member."""
    from foundation.core.errors import ShardError

    directory, run = damaged
    tar = _val_tar(directory)
    key = tar_keys(tar)[1]
    nan = np.full((3, 8), np.nan, np.float16)
    rewrite_tar(tar, lambda name, payload: _npy(nan) if name == f"{key}.fmri.npy" else payload)
    expect("NaN in a validation sample", ShardError, run, tar, f"sample {key}", "fmri.npy", "non-finite",
           request=request)
    _after(tmp_path, tar)


def test_label_value_2_in_a_shard(damaged, tmp_path, request):
    """Issue 16.12: a label 2 used to raise ``labels must be 0/1`` without the file."""
    directory, run = damaged
    tar = _val_tar(directory)
    key = tar_keys(tar)[0]
    rewrite_tar(tar, lambda name, payload: _npy(np.array([0, 2, 1, 0], np.uint8)) if name == f"{key}.labels.npy"
                else payload)
    expect("label value 2 in a shard", ShardError, run, tar, f"sample {key}", "[2.0]", "labels must be 0/1",
           request=request)
    _after(tmp_path, tar)


def test_diverging_training_stops_at_the_first_non_finite_loss(pristine, tmp_path, request):
    """Issue 16.12: ``train.lr=1e30`` used to train on NaN and fail in the metrics; it stops at the first
    non-finite loss with the step, a sample key and its shard."""
    from foundation.core.errors import NonFiniteError
    from foundation.workflows.train import train

    recipe = _recipe(tmp_path, pristine)
    recipe.train.lr, recipe.train.max_grad_norm, recipe.train.warmup_steps = 1e30, None, 0
    expect("diverging training (train.lr=1e30)", NonFiniteError, lambda: train(recipe, progress=False),
                 "step 2:", "the training loss is not finite", "synthetic/sub-", str(pristine), "train.lr",
                 request=request)
    # read back only at log/eval/checkpoint steps (no sync per step), it still names the first bad step
    recipe.train.log_every = recipe.train.eval_every = recipe.train.checkpoint_every = 4
    recipe.run.dir = str(tmp_path / "run2")
    with pytest.raises(NonFiniteError, match=r"^step 2: "):
        train(recipe, progress=False)
    assert not (tmp_path / "run2" / "checkpoints").exists() and not (tmp_path / "run2" / "best").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert_nothing_half_written(tmp_path)
