"""``model.alignment``: fitted on training data only, saved without pickle, applied alike by train/finetune/predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

DS = "synthetic"


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    root = tmp_path_factory.mktemp("aligned")
    d = tiny_recipe_dict(root, **{"train.steps": 4, "train.eval_every": 2, "train.checkpoint_every": 4,
                                  "model.alignment": "guidance-ridge", "model.alignment_dim": 6})
    d["datasets"][0]["subjects"] = ["sub-01", "sub-02"]
    train(from_dict(Recipe, d), progress=False)
    return root, d


def _refit(shards: Path, model, subject: str, keep: set[str] | None = None):
    """The alignment of ``subject`` recomputed here from its training split (optionally a subset)."""
    from foundation.data.splits import read_split
    from foundation.data.index import read_index
    from foundation.model.alignment import fit_guidance_ridge

    part = read_split(read_index(shards), subject, "train")
    rows = [i for i, k in enumerate(part.keys) if keep is None or k in keep]
    al = model.alignments[DS]
    return fit_guidance_ridge(part.x[rows], al.targets(part.low[rows], part.high[rows])), len(rows)


def test_train_fits_each_subject_on_its_training_split_and_saves_it_without_pickle(aligned_run):
    from foundation.engine.align import load_alignment
    from foundation.engine.checkpoint import load_model

    root, _ = aligned_run
    run = root / "run"
    model, _ = load_model(run / "best")
    assert model.cfg.alignment == "guidance-ridge" and model.cfg.guidance_dims == [16, 16]
    al = model.alignments[DS]
    assert al.dim == 6 and bool(al.basis_fitted) and al.fitted.tolist() == [True, True]
    fit = json.loads((run / "alignment" / "fit.json").read_text())
    shards = next((root / "shards").glob("synthetic-*"))
    for row, subject in enumerate(("sub-01", "sub-02")):
        (mean, weight, info), n = _refit(shards, model, subject)
        assert fit[f"{DS}/{subject}"] == {"alpha": info["alpha"], "n": n}  # every training sample, no val/test
        np.testing.assert_allclose(al.weight[row].numpy(), weight, rtol=1e-5, atol=1e-6)
        # the per-subject export round-trips without pickle and equals the checkpoint's buffers
        m2, w2, method = load_alignment(run / "alignment" / DS / f"{subject}.npz")
        assert method == "guidance-ridge"
        assert np.array_equal(m2, al.mean[row].numpy()) and np.array_equal(w2, al.weight[row].numpy())
    assert {"alignments.synthetic.weight", "alignments.synthetic.proj_low"} <= set(load_file(str(run / "best" / "model.safetensors")))


def test_predict_applies_the_same_alignment(aligned_run, tmp_path):
    from foundation.engine.align import load_alignment
    from foundation.engine.checkpoint import load_model
    from foundation.workflows.predict import predict_run

    root, _ = aligned_run
    run = root / "run"
    x = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float16).astype(np.float32)
    np.save(tmp_path / "scans.npy", x)
    records = predict_run(run, tmp_path / "scans.npy", subject="sub-02", progress=False)
    got = np.stack([list(r["probabilities"].values()) for r in records])
    model, _ = load_model(run / "best")
    model.eval()
    idx = model.subject_index([f"{DS}/sub-02"] * 5)
    with torch.no_grad():
        direct = torch.sigmoid(model(DS, torch.from_numpy(x), idx).logits).numpy()
        aligned = model.alignments[DS](torch.from_numpy(x), idx).reshape(5, -1).numpy()
    np.testing.assert_allclose(got, direct, atol=1e-6)
    mean, weight, _ = load_alignment(run / "alignment" / DS / "sub-02.npz")
    np.testing.assert_allclose(aligned, (x.reshape(5, -1) - mean) @ weight, rtol=1e-4, atol=1e-4)


def test_finetune_fits_only_the_new_subject_on_its_kept_training_samples(aligned_run, tmp_path):
    from foundation.engine.checkpoint import load_model
    from foundation.core.config import Recipe
    from foundation.data.index import read_index
    from foundation.data.loader import DatasetStream
    from foundation.workflows.finetune import finetune
    from foundation.core.recipe import from_dict

    root, d = aligned_run
    ft = json.loads(json.dumps(d))
    ft["datasets"][0].update(subjects=["sub-03"], train_fraction=0.5)
    ft["run"]["dir"] = str(tmp_path / "ft")
    ft["train"].update(steps=3, eval_every=3, checkpoint_every=3)
    metrics = json.loads(Path(finetune(root / "run", from_dict(Recipe, ft), progress=False)).read_text())
    assert metrics["finetune"]["trainable_parameters"] == 2 * 16  # the tokens only: the map is fitted
    before = load_file(str(root / "run" / "best" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "best" / "model.safetensors"))
    for name in ("weight", "mean", "fitted"):
        key = f"alignments.{DS}.{name}"
        assert torch.equal(after[key][:2], before[key])  # the known subjects' maps, bit for bit
    for key in ("proj_low", "proj_high", "centre_low", "centre_high"):
        assert torch.equal(after[f"alignments.{DS}.{key}"], before[f"alignments.{DS}.{key}"])  # the basis is kept
    shards = next((root / "shards").glob("synthetic-*"))
    stream = DatasetStream(read_index(shards), subjects=["sub-03"], train_fraction=0.5)
    keep = {k for keys in stream.train_keys().values() for k in keys}
    model, _ = load_model(tmp_path / "ft" / "best")
    (mean, weight, info), n = _refit(shards, model, "sub-03", keep)
    assert json.loads((tmp_path / "ft" / "alignment" / "fit.json").read_text()) == {f"{DS}/sub-03": {**info, "n": n}}
    assert n == len(keep) < 36  # half of sub-03's training samples
    np.testing.assert_allclose(after[f"alignments.{DS}.weight"][2].numpy(), weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alignment", ["guidance-ridge", "guidance-pca-ridge"])
def test_volume_dataset_alignment_is_fitted_on_in_mask_voxels_and_predict_applies_it(tmp_path, alignment):
    """Volume datasets take the same alignment: each subject's map over its own in-mask voxels (rows beyond
    them zero), fitted on its training split, and predict on the shards scores what the model's forward does."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    from foundation.engine.checkpoint import load_model
    from foundation.model.alignment import FITTERS
    from foundation.workflows.predict import predict_run
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(tmp_path, **{"train.steps": 4, "train.eval_every": 2, "train.checkpoint_every": 4,
                                      "model.alignment": alignment, "model.alignment_dim": 6})
    d["datasets"] = [{"plugin": "synthetic", "name": "vol",
                      "options": {"mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 80,
                                  "n_categories": 4}}]
    train(from_dict(Recipe, d), progress=False)
    model, _ = load_model(tmp_path / "run" / "best")
    model.eval()
    al = model.alignments["vol"]
    shards = next((tmp_path / "shards").glob("vol-*"))
    index = read_index(shards)
    # the maps are as wide as the subjects' most in-mask voxels (not the grid), the shared grid is the grid
    assert al.ragged and al.in_features == max(index.data["voxels"].values()) < al.grid_features == 6 * 7 * 6
    assert al.fitted.tolist() == [True, True]
    for row, subject in enumerate(("sub-01", "sub-02")):
        part = read_split(index, subject, "train")
        n_vox = part.x.shape[1]
        assert n_vox == index.data["voxels"][subject] <= al.in_features
        mean, weight, info = FITTERS[alignment](part.x, al.targets(part.low, part.high))
        np.testing.assert_allclose(al.weight[row, :n_vox].numpy(), weight, rtol=1e-5, atol=1e-6)
        fit = json.loads((tmp_path / "run" / "alignment" / "fit.json").read_text())
        assert ("rank" in fit[f"vol/{subject}"]) == (alignment == "guidance-pca-ridge"), fit
        assert not al.weight[row, n_vox:].any() and not al.mean[row, n_vox:].any()
    test = read_split(index, "sub-02", "test")
    records = predict_run(tmp_path / "run", shards, subject="vol/sub-02", progress=False)
    got = np.stack([list(r["probabilities"].values()) for r in records])
    with torch.no_grad():
        idx = model.subject_index(["vol/sub-02"] * len(test))
        direct = torch.sigmoid(model("vol", torch.from_numpy(test.x), idx,
                                     voxel_index=torch.zeros(len(test), test.x.shape[1], dtype=torch.long)).logits)
    by_key = {r["key"]: p for r, p in zip(records, got)}
    np.testing.assert_allclose(np.stack([by_key[k] for k in test.keys]), direct.numpy(), atol=1e-5)


@pytest.mark.parametrize("basis", ["dataset", "shared"])
def test_alignment_basis_is_per_dataset_or_one_for_all_datasets(tmp_path, basis):
    """``model.alignment_basis: shared`` fits one guidance basis on every dataset's training stimuli, so two
    datasets' aligned tokens share coordinates; ``dataset`` (default) fits one per dataset."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    from foundation.engine.checkpoint import load_model
    from foundation.model.alignment import guidance_basis
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(tmp_path, **{"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
                                      "model.alignment": "guidance-ridge", "model.alignment_dim": 4,
                                      "model.alignment_basis": basis})
    roi = d["datasets"][0]
    d["datasets"] = [{**roi, "name": "a", "options": {**roi["options"], "semantics": "population"}},
                     {**roi, "name": "b", "options": {**roi["options"], "semantics": "population", "world_seed": 0,
                                                      "label_offset": 2, "n_subjects": 2}}]
    train(from_dict(Recipe, d), progress=False)
    model, _ = load_model(tmp_path / "run" / "best")
    a, b = model.alignments["a"], model.alignments["b"]
    same = torch.equal(a.proj_high, b.proj_high) and torch.equal(a.centre_low, b.centre_low)
    assert same == (basis == "shared")
    # the basis is the one fitted on the training stimuli of the datasets it covers
    lows, highs = [], []
    for ds in (["a", "b"] if basis == "shared" else ["a"]):
        index = read_index(next((tmp_path / "shards").glob(f"{ds}-*")))
        seen = {}
        for s in index.data["subjects"]:
            part = read_split(index, s, "train")
            for i, stim in enumerate(part.stimuli):
                seen.setdefault(stim, (part.low[i], part.high[i]))
        lows += [v[0] for v in seen.values()]
        highs += [v[1] for v in seen.values()]
    centre, proj = guidance_basis(np.stack(highs), 4)
    np.testing.assert_allclose(a.centre_high.numpy(), centre, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.abs(a.proj_high.numpy()[:, : proj.shape[1]]), np.abs(proj), rtol=1e-4, atol=1e-5)


def test_joint_volume_alignment_fits_every_subject_together_and_refuses_roi_inputs(tmp_path):
    """``guidance-ridge-joint``: the trainer installs exactly the joint fitter's maps (each over the subject's own
    in-mask voxels); on an ROI dataset it stops with an error naming the dataset before training."""
    from foundation.core.config import Recipe
    from foundation.core.errors import DataError
    from foundation.core.recipe import from_dict
    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    from foundation.engine.checkpoint import load_model
    from foundation.model.alignment_joint import fit_guidance_ridge_joint
    from foundation.workflows.train import train
    from tests.conftest import tiny_recipe_dict

    d = _volume_recipe(tmp_path, ["sub-01", "sub-02"], alignment="guidance-ridge-joint", alignment_share=0.5)
    train(from_dict(Recipe, d), progress=False)
    model, _ = load_model(tmp_path / "run" / "best")
    al = model.alignments["vol"]
    index = read_index(next((tmp_path / "shards").glob("vol-*")))
    parts = [read_split(index, s, "train") for s in ("sub-01", "sub-02")]
    fits = fit_guidance_ridge_joint([p.x for p in parts],
                                    [np.flatnonzero(index.mask(s).reshape(-1)) for s in ("sub-01", "sub-02")],
                                    [al.targets(p.low, p.high) for p in parts], share=0.5,
                                    stimuli=[p.stimuli for p in parts])
    for row, (part, (mean, weight, _)) in enumerate(zip(parts, fits)):
        n_vox = part.x.shape[1]
        np.testing.assert_allclose(al.weight[row, :n_vox].numpy(), weight, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(al.mean[row, :n_vox].numpy(), mean, rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / "run" / "alignment" / "fit.json").read_text())
    assert report["vol/sub-01"]["share"] == 0.5 and report["vol/sub-01"]["cv"] == "5-fold over stimuli"

    # the model keeps the pool's shared map; a subject added by fine-tuning is fitted against it (the others'
    # maps stay bit for bit)
    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared, fit_joint_and_shared

    _, pool = fit_joint_and_shared([p.x for p in parts],
                                   [np.flatnonzero(index.mask(s).reshape(-1)) for s in ("sub-01", "sub-02")],
                                   [al.targets(p.low, p.high) for p in parts], share=0.5,
                                   stimuli=[p.stimuli for p in parts])
    kept = al.shared_map()
    assert kept is not None and kept.lam == pytest.approx(pool.lam) and kept.share == 0.5
    np.testing.assert_allclose(kept.weight[pool.positions], pool.weight, rtol=1e-6, atol=1e-7)
    assert not kept.weight[np.setdiff1d(np.arange(al.grid_features), pool.positions)].any()
    tuned = _finetune(tmp_path, d, ["sub-03"], "ft")
    new = tuned.alignments["vol"]
    assert torch.equal(new.weight[:2], al.weight) and torch.equal(new.mean[:2], al.mean)
    assert torch.equal(new.shared_weight, al.shared_weight)
    part = read_split(index, "sub-03", "train")
    _, weight, _ = fit_guidance_ridge_to_shared(part.x, np.flatnonzero(index.mask("sub-03").reshape(-1)),
                                                new.targets(part.low, part.high), pool, stimuli=part.stimuli)
    np.testing.assert_allclose(new.weight[2, :part.x.shape[1]].numpy(), weight, rtol=1e-4, atol=1e-6)
    fit = json.loads((tmp_path / "ft" / "alignment" / "fit.json").read_text())
    assert fit["vol/sub-03"]["method"].startswith("guidance-ridge-joint (added by fine-tuning")
    assert fit["vol/sub-03"]["shared_scale"] in (0.0, 0.25, 0.5, 1.0) and fit["vol/sub-03"]["cv"] == "5-fold over stimuli"

    # a checkpoint saved before the shared map was kept (no shared_* buffers): it loads, and a newcomer
    # gets the per-subject ridge map, recorded as such
    from safetensors.torch import load_file, save_file

    from foundation.core.integrity import write_manifest
    from foundation.model.alignment import fit_guidance_ridge

    weights = tmp_path / "run" / "best" / "model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if ".shared_" not in k}
    save_file(state, weights)
    write_manifest(weights.parent)  # as an older foundation wrote it
    old = _finetune(tmp_path, d, ["sub-03"], "ft-old")
    _, weight, _ = fit_guidance_ridge(part.x, old.alignments["vol"].targets(part.low, part.high))
    np.testing.assert_allclose(old.alignments["vol"].weight[2, :part.x.shape[1]].numpy(), weight, rtol=1e-5, atol=1e-6)
    fit = json.loads((tmp_path / "ft-old" / "alignment" / "fit.json").read_text())
    assert fit["vol/sub-03"]["method"].startswith("guidance-ridge (per subject: added by fine-tuning to a model saved")

    roi = tiny_recipe_dict(tmp_path / "roi", **{"train.steps": 2, "model.alignment": "guidance-ridge-joint",
                                                 "model.alignment_dim": 6})
    with pytest.raises(DataError, match="'synthetic'.*volume|volume.*'synthetic'"):
        train(from_dict(Recipe, roi), progress=False)


def test_joint_alignment_beyond_its_memory_budget_fits_the_rest_against_the_shared_map(tmp_path):
    """``model.alignment_pool_gib``: the trainer fits jointly only the leading subjects that fit in the budget
    (here the first, the least the pool takes); the others get exactly the newcomer fit against the pool's shared
    map, and fit.json says so."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    from foundation.engine.checkpoint import load_model
    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared, fit_joint_and_shared
    from foundation.workflows.train import train

    names = ["sub-01", "sub-02", "sub-03"]
    d = _volume_recipe(tmp_path, names, alignment="guidance-ridge-joint", alignment_pool_gib=1e-9)
    train(from_dict(Recipe, d), progress=False)
    model, _ = load_model(tmp_path / "run" / "best")
    al = model.alignments["vol"]
    index = read_index(next((tmp_path / "shards").glob("vol-*")))
    parts = {s: read_split(index, s, "train") for s in names}
    pos = {s: np.flatnonzero(index.mask(s).reshape(-1)) for s in names}
    [(_, w_pool, _)], pool = fit_joint_and_shared([parts["sub-01"].x], [pos["sub-01"]],
                                                  [al.targets(parts["sub-01"].low, parts["sub-01"].high)],
                                                  stimuli=[parts["sub-01"].stimuli])
    np.testing.assert_allclose(al.weight[0, :w_pool.shape[0]].numpy(), w_pool, rtol=1e-4, atol=1e-6)
    for row, s in enumerate(names[1:], start=1):
        _, weight, _ = fit_guidance_ridge_to_shared(parts[s].x, pos[s], al.targets(parts[s].low, parts[s].high), pool,
                                                    stimuli=parts[s].stimuli)
        np.testing.assert_allclose(al.weight[row, :weight.shape[0]].numpy(), weight, rtol=1e-4, atol=1e-6)
    fit = json.loads((tmp_path / "run" / "alignment" / "fit.json").read_text())
    assert fit["vol/sub-01"]["pool"] == "joint" and "method" not in fit["vol/sub-01"]
    assert fit["vol/sub-03"]["pool"] == "against the shared map"
    assert "model.alignment_pool_gib" in fit["vol/sub-03"]["method"]


def test_a_newcomer_with_more_voxels_than_the_pool_widens_the_maps(tmp_path):
    """The maps are as wide as the pre-trained subjects' most in-mask voxels; ``foundation finetune`` of a subject
    with more widens them (the known subjects' maps unchanged, zero beyond their voxels) and the saved model
    records the new width."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    from foundation.engine.checkpoint import load_model
    from foundation.model.alignment import fit_guidance_ridge
    from foundation.workflows.train import train

    d = _volume_recipe(tmp_path, ["sub-01", "sub-03"], alignment="guidance-ridge")
    train(from_dict(Recipe, d), progress=False)
    index = read_index(next((tmp_path / "shards").glob("vol-*")))
    voxels = index.data["voxels"]
    assert voxels["sub-02"] > max(voxels["sub-01"], voxels["sub-03"])  # this world's draw: sub-02 is the largest
    model, _ = load_model(tmp_path / "run" / "best")
    al = model.alignments["vol"]
    assert al.in_features == max(voxels["sub-01"], voxels["sub-03"])
    tuned = _finetune(tmp_path, d, ["sub-02"], "ft")
    new = tuned.alignments["vol"]
    assert new.in_features == voxels["sub-02"] and tuned.config_dict()["alignment_rows"] == {"vol": voxels["sub-02"]}
    assert torch.equal(new.weight[:2, :al.in_features], al.weight) and not new.weight[:2, al.in_features:].any()
    part = read_split(index, "sub-02", "train")
    _, weight, _ = fit_guidance_ridge(part.x, new.targets(part.low, part.high))
    np.testing.assert_allclose(new.weight[2].numpy(), weight, rtol=1e-5, atol=1e-6)


def _volume_recipe(tmp_path: Path, subjects: list[str], **model) -> dict:
    """A 2-step recipe over ``subjects`` of a tiny 3-subject synthetic volume world (6 × 7 × 6 grid, 80 s; the
    subjects hold 104, 112 and 88 in-mask voxels), ``model.<key>`` = each of ``model`` (``alignment_dim`` 6)."""
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(tmp_path, **{"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
                                      "model.alignment_dim": 6, **{f"model.{k}": v for k, v in model.items()}})
    d["datasets"] = [{"plugin": "synthetic", "name": "vol", "subjects": list(subjects),
                      "options": {"mode": "volume", "n_subjects": 3, "grid": [6, 7, 6], "seconds": 80,
                                  "n_categories": 4}}]
    return d


def _finetune(tmp_path: Path, d: dict, subjects: list[str], name: str):
    """``foundation finetune`` of ``tmp_path/run`` with recipe ``d`` narrowed to ``subjects``, into
    ``tmp_path/name``; returns the fine-tuned best model."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict
    from foundation.engine.checkpoint import load_model
    from foundation.workflows.finetune import finetune

    ft = json.loads(json.dumps(d))
    ft["datasets"][0]["subjects"] = list(subjects)
    ft["run"]["dir"] = str(tmp_path / name)
    finetune(tmp_path / "run", from_dict(Recipe, ft), progress=False)
    return load_model(tmp_path / name / "best")[0]


def test_an_alignment_with_fewer_than_three_kept_samples_is_refused_naming_the_subject(tmp_path):
    """``train_fraction`` can leave a subject 1 training sample; its map cannot be fitted: the trainer stops before
    reading any subject's data, naming the subject and the fraction."""
    from foundation.core.config import Recipe
    from foundation.core.errors import DataError
    from foundation.core.recipe import from_dict
    from foundation.workflows.train import train

    d = _volume_recipe(tmp_path, ["sub-01", "sub-02"], alignment="guidance-ridge-joint")
    d["datasets"][0]["train_fraction"] = 0.01
    with pytest.raises(DataError, match=r"vol/sub-01: 1 training samples kept \(train_fraction 0.01\)"):
        train(from_dict(Recipe, d), progress=False)
