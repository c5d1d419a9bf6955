"""The per-subject linear baselines (``foundation.workflows.linear``; bench methods ``ridge`` and ``logistic``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foundation.data.splits import Split


def _recipe(tmp_path, **options):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict

    opts = {"n_subjects": 2, "stimuli_per_subject": 120, "shared_test": 40, "n_rois": 3, "token_dim": 8,
            "n_categories": 4, "val_fraction": 0.25, **options}
    return from_dict(Recipe, {"name": "lin", "datasets": [{"plugin": "synthetic", "name": "roi", "options": opts}],
                              "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 64},
                              "run": {"dir": str(tmp_path / "run")}})


@pytest.mark.parametrize("solver", ["ridge", "logistic"])
def test_linear_baseline_beats_chance_per_subject_and_writes_run_metrics(tmp_path, solver):
    from foundation.workflows.linear import LOGISTIC_CS, RIDGE_ALPHAS, run_linear

    metrics = json.loads(Path(run_linear(_recipe(tmp_path), solver=solver, progress=False)).read_text())
    test = metrics["test"]
    assert set(test["per_subject"]) == {"roi/sub-01", "roi/sub-02"}
    assert test["n"] == 2 * 40  # every subject's shared test stimuli
    for gid, m in test["per_subject"].items():
        assert m["mAP"] > test["chance_mAP"] + 0.15, gid  # the world's planted signal is linear in the tokens
    grid = RIDGE_ALPHAS if solver == "ridge" else LOGISTIC_CS
    assert all(c["strength"] in grid for c in metrics["linear"]["chosen"].values())


def test_the_per_subject_baseline_holds_one_subject_at_a_time(tmp_path, monkeypatch):
    """Issue 18, round 9: the per-subject read-out reads, fits and predicts one subject, then lets its samples go
    before the next is read (it held every subject's splits at once: memory grew with the subject count)."""
    import weakref

    from foundation.workflows import linear

    alive_when_read: list[int] = []
    held: list[weakref.ref] = []
    real = linear._subject_splits

    def tracked(*args, **kwargs):
        alive_when_read.append(sum(ref() is not None for ref in held))
        data = real(*args, **kwargs)
        held.extend(weakref.ref(part) for part in data.values())
        return data

    monkeypatch.setattr(linear, "_subject_splits", tracked)
    metrics = json.loads(Path(linear.run_linear(_recipe(tmp_path, n_subjects=3), progress=False)).read_text())
    assert len(metrics["test"]["per_subject"]) == 3
    assert alive_when_read == [0, 0, 0]


def test_train_fraction_fits_on_the_subset_the_trained_methods_see(tmp_path):
    """``datasets[].train_fraction`` keeps the same fixed training samples as the trainer's stream."""
    import dataclasses

    from foundation.data.loader import DatasetStream
    from foundation.data.shards import find_shards
    from foundation.workflows.linear import run_linear

    recipe = _recipe(tmp_path)
    full = json.loads(Path(run_linear(recipe, progress=False)).read_text())["linear"]["chosen"]
    part = dataclasses.replace(recipe, datasets=[dataclasses.replace(recipe.datasets[0], train_fraction=0.25)],
                               run=dataclasses.replace(recipe.run, dir=str(tmp_path / "run-quarter")))
    chosen = json.loads(Path(run_linear(part, progress=False)).read_text())["linear"]["chosen"]
    index = find_shards(part)["roi"]
    for gid in chosen:
        stream = DatasetStream(index, subjects=[gid.split("/")[1]], train_fraction=0.25)
        kept = sum(len(v) for v in stream.train_keys().values())
        assert chosen[gid]["n_train"] == kept < full[gid]["n_train"], (gid, chosen[gid], full[gid])


def test_regularisation_is_chosen_on_validation_not_test():
    """The chosen value is the validation argmax: a grid point that is best on test but not on val loses."""
    from foundation.workflows.linear import fit_subject

    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 3))

    def split(n, noise):
        x = rng.normal(size=(n, 20)).astype(np.float32)
        y = (x @ w + noise * rng.normal(size=(n, 3)) > 0).astype(np.float32)
        return Split([str(i) for i in range(n)], [str(i) for i in range(n)], x, y, x[:, :2], x[:, :2])

    train = split(30, 0.1)
    val = split(60, 0.1)
    grid = (1e-2, 1e2, 1e6)
    strength, val_map, predict = fit_subject(train, val, solver="ridge", grid=grid)
    from foundation.objectives.metrics import multilabel_metrics

    import torch

    scores = {a: multilabel_metrics(torch.from_numpy(fit_subject(train, val, solver="ridge", grid=(a,))[2](val.x)).float(),
                                    torch.from_numpy(val.y).int())["mAP"] for a in grid}
    assert strength == max(scores, key=scores.get)
    assert val_map == pytest.approx(scores[strength])
    probs = predict(val.x)
    assert probs.shape == (60, 3) and ((probs > 0) & (probs < 1)).all()


def test_ridge_probabilities_keep_ranks_and_the_decision_threshold():
    from foundation.workflows.linear import ridge_probabilities

    s = np.array([[-3.0, 0.2, 0.5, 0.8, 4.0]])
    p = ridge_probabilities(s)
    assert (np.diff(p[0]) > 0).all() and p[0, 2] == pytest.approx(0.5)
    assert ((p > 0.5) == (s > 0.5)).all()


def test_bench_runs_linear_methods_beside_the_others(tmp_path):
    from foundation.workflows.compare import METHODS, plan_jobs, run_job, summarise

    import yaml

    from foundation.core.recipe import to_dict

    path = tmp_path / "lin.yaml"
    path.write_text(yaml.safe_dump(to_dict(_recipe(tmp_path))))
    jobs = plan_jobs(path, methods=["ridge", "logistic"], seeds=[0], out=tmp_path / "bench")
    assert [j.method.kind for j in jobs] == ["linear", "linear"] and all(j.subject is None for j in jobs)
    results = [run_job(j, threads=1) for j in jobs]
    block = summarise(jobs, results)["roi"]["methods"]
    assert block["ridge"]["pooled_mAP"] == []  # one model per subject: no pooled row
    assert len(block["logistic"]["scores"]["mAP"]) == 2
    assert METHODS["ridge"].args == ("--solver", "ridge")
    # any row can be the reference of the paired tests
    from foundation.workflows.compare import markdown

    summary = summarise(jobs, results, reference="ridge")
    assert set(summary["roi"]["tests"]) == {"logistic"} and summary["roi"]["tests"]["logistic"]["n_pairs"] == 2
    assert "Δ mAP vs Ridge (per subject)" in markdown(summary, header="h")


def _aligned_world(n_subjects: int, *, seed: int = 0):
    """Subjects whose inputs are one noisy linear image of the stimuli's guidance codes, each in its own
    coordinates (a permutation and sign flip of the input columns per subject)."""
    rng = np.random.default_rng(seed)
    n_stim, f, c = 160, 24, 3
    low, high = rng.normal(size=(n_stim, 6)), rng.normal(size=(n_stim, 6))
    labels = (high[:, :c] + 0.3 * rng.normal(size=(n_stim, c)) > 0.3).astype(np.float32)
    mix = rng.normal(size=(12, f))
    clean = np.concatenate([low, high], 1) @ mix
    noise = 0.5 * rng.normal(size=clean.shape)
    data, codes = {}, []
    for s in range(n_subjects):
        perm, sign = rng.permutation(f), rng.choice([-1.0, 1.0], size=f)
        codes.append((perm, sign))
        x = ((clean + noise)[:, perm] * sign).astype(np.float32)
        parts = {}
        for split, rows in (("train", slice(0, 100)), ("val", slice(100, 130)), ("test", slice(130, 160))):
            idx = np.arange(n_stim)[rows]
            parts[split] = Split([f"s{s}-{i}" for i in idx], [str(i) for i in idx], x[idx], labels[idx],
                                 low[idx].astype(np.float32), high[idx].astype(np.float32))
        data[f"sub-{s + 1:02d}"] = parts
    return data, codes


@pytest.mark.parametrize("alignment", ["guidance-ridge", "guidance-encoding", "guidance-pca-ridge"])
def test_pooled_aligned_readout_undoes_each_subjects_coordinates(alignment):
    """Subjects that differ only by their input coordinates get the same predictions from the pooled
    read-out: the per-subject alignment maps both onto one space before the one shared read-out."""
    from foundation.workflows.linear import fit_pooled_aligned

    data, _ = _aligned_world(3)
    predictors, report = fit_pooled_aligned(data, alignment=alignment, solver="ridge", dim=4)
    assert report["alignment"] == alignment and set(report["alpha"]) == set(data)
    assert (set(report.get("rank", {})) == set(data)) == (alignment == "guidance-pca-ridge")  # components kept
    assert report["n_train"] == 3 * 100
    test = data["sub-01"]["test"]
    p1 = predictors["sub-01"](test.x)
    for s in ("sub-02", "sub-03"):  # the same responses in other coordinates: the same predictions
        np.testing.assert_allclose(predictors[s](data[s]["test"].x), p1, atol=1e-4)
    # a per-subject linear read-out cannot be told apart either, but one map on the raw inputs (no
    # alignment) sees three different codes: its predictions differ between the subjects
    from sklearn.linear_model import Ridge

    raw = Ridge(alpha=1.0).fit(np.concatenate([p["train"].x for p in data.values()]),
                               np.concatenate([p["train"].y for p in data.values()]))
    assert np.abs(raw.predict(data["sub-02"]["test"].x) - raw.predict(test.x)).max() > 0.1


def test_pooled_aligned_readout_runs_in_bench_as_one_model(tmp_path):
    from foundation.workflows.compare import METHODS, plan_jobs, run_job, summarise

    import yaml

    from foundation.core.recipe import to_dict

    path = tmp_path / "lin.yaml"
    path.write_text(yaml.safe_dump(to_dict(_recipe(tmp_path))))
    jobs = plan_jobs(path, methods=["aligned-ridge"], seeds=[0], out=tmp_path / "bench")
    assert METHODS["aligned-ridge"].one_model and not METHODS["ridge"].one_model
    result = run_job(jobs[0], threads=1)
    metrics = json.loads((jobs[0].run_dir / "metrics.json").read_text())
    assert metrics["method"] == "aligned-ridge" and metrics["linear"]["alignment"] == "guidance-ridge"
    chosen = metrics["linear"]["chosen"]["roi"]
    assert chosen["n_train"] == sum(c["n_train"] for c in _per_subject_counts(tmp_path))
    for gid, m in metrics["test"]["per_subject"].items():
        assert m["mAP"] > metrics["test"]["chance_mAP"] + 0.15, gid
    block = summarise(jobs, [result])["roi"]["methods"]
    assert len(block["aligned-ridge"]["pooled_mAP"]) == 1  # one read-out for all subjects: a pooled score


def _per_subject_counts(tmp_path):
    from foundation.workflows.linear import run_linear

    recipe = _recipe(tmp_path)
    import dataclasses

    recipe = dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, dir=str(tmp_path / "per-subject")))
    return json.loads(Path(run_linear(recipe, progress=False)).read_text())["linear"]["chosen"].values()


def test_joint_aligned_readout_on_volumes_and_refused_on_roi(tmp_path):
    """``--alignment guidance-ridge-joint``: one pooled read-out over maps fitted together (volume datasets);
    an ROI dataset is refused naming it."""
    import dataclasses

    from foundation.core.errors import FoundationError
    from foundation.workflows.linear import run_linear

    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict

    recipe = _recipe(tmp_path)
    vrecipe = from_dict(Recipe, {"name": "joint", "datasets": [{"plugin": "synthetic", "name": "vol", "options": {
        "mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 80, "n_categories": 4}}],
        "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 64}, "run": {"dir": str(tmp_path / "joint")}})
    metrics = json.loads(Path(run_linear(vrecipe, alignment="guidance-ridge-joint", progress=False)).read_text())
    chosen = metrics["linear"]["chosen"]["vol"]
    assert metrics["linear"]["alignment"] == "guidance-ridge-joint" and chosen["share"] == recipe.model.alignment_share
    assert set(chosen["alpha"]) == {"sub-01", "sub-02"} and len(metrics["test"]["per_subject"]) == 2
    with pytest.raises(FoundationError, match="'roi'"):
        run_linear(dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, dir=str(tmp_path / "r"))),
                   alignment="guidance-ridge-joint", progress=False)


def test_grid_pooled_readout_is_one_ridge_over_the_subjects_voxels_in_the_grid_and_refused_on_roi(tmp_path):
    """``--alignment grid``: the predictions are those of one ridge fitted by hand on every subject's standardised
    voxels placed at their grid positions (alpha as chosen); an ROI dataset is refused naming it."""
    import dataclasses

    from foundation.core.config import Recipe
    from foundation.core.errors import FoundationError
    from foundation.core.recipe import from_dict
    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    import torch

    from foundation.workflows.linear import _fit_ridge, run_linear

    vrecipe = from_dict(Recipe, {"name": "grid", "datasets": [{"plugin": "synthetic", "name": "vol", "options": {
        "mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 80, "n_categories": 4}}],
        "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 64}, "run": {"dir": str(tmp_path / "g")}})
    metrics = json.loads(Path(run_linear(vrecipe, alignment="grid", progress=False)).read_text())
    chosen = metrics["linear"]["chosen"]["vol"]
    assert metrics["method"] == "grid-ridge" and metrics["linear"]["alignment"] == "grid"
    index = read_index(next((tmp_path / "shards").glob("vol-*")))
    subjects = ["sub-01", "sub-02"]
    pos = {s: index.voxel_positions(s) for s in subjects}
    union = np.unique(np.concatenate(list(pos.values())))
    assert chosen["grid_voxels"] == len(union)
    parts = {s: {sp: read_split(index, s, sp) for sp in ("train", "test")} for s in subjects}

    def placed(s, x):
        tr = parts[s]["train"].x
        out = np.zeros((len(x), len(union)), np.float32)
        out[:, np.searchsorted(union, pos[s])] = (x - tr.mean(0)) / (tr.std(0) + 1e-6)
        return out

    z = np.concatenate([placed(s, parts[s]["train"].x) for s in subjects])
    fit = _fit_ridge(z - z.mean(0), np.concatenate([parts[s]["train"].y for s in subjects]), chosen["strength"])
    from foundation.objectives.metrics import multilabel_metrics

    for s in subjects:
        probs = fit(placed(s, parts[s]["test"].x) - z.mean(0))
        expected = multilabel_metrics(torch.from_numpy(probs).float(), torch.from_numpy(parts[s]["test"].y).int())
        assert metrics["test"]["per_subject"][f"vol/{s}"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-5)
    roi = _recipe(tmp_path)
    with pytest.raises(FoundationError, match="'roi'"):
        run_linear(dataclasses.replace(roi, run=dataclasses.replace(roi.run, dir=str(tmp_path / "r"))),
                   alignment="grid", progress=False)


def test_grid_pooled_readout_places_each_subjects_voxels_where_they_lie():
    """Two subjects with partly overlapping masks whose labels are read from the shared voxels: one pooled map
    reads both; the union is the grid width; shuffling a subject's voxel order together with its positions
    changes no prediction (a voxel goes where its position says, not where its column is)."""
    from foundation.workflows.linear import fit_pooled_grid

    rng = np.random.default_rng(0)
    n, grid_cells = 240, 30
    w = rng.normal(size=(10, 2))  # the labels: a map over grid cells 10..19, which both subjects see
    positions = {"sub-01": np.arange(0, 20), "sub-02": np.arange(10, 30)}
    data = {}
    for s, pos in positions.items():
        full = rng.normal(size=(n, grid_cells)).astype(np.float32)
        y = (full[:, 10:20] @ w > 0).astype(np.float32)
        x = full[:, pos]
        parts = {}
        for split, rows in (("train", slice(0, 160)), ("val", slice(160, 200)), ("test", slice(200, 240))):
            idx = np.arange(n)[rows]
            parts[split] = Split([f"{s}-{i}" for i in idx], [str(i) for i in idx], x[idx], y[idx],
                                 np.zeros((len(idx), 2), np.float32), np.zeros((len(idx), 2), np.float32))
        data[s] = parts
    predict, report = fit_pooled_grid(data, positions=positions, solver="ridge")
    assert report["grid_voxels"] == grid_cells and report["n_train"] == 320
    for s in data:
        probs, y = predict[s](data[s]["test"].x), data[s]["test"].y
        assert ((probs > 0.5) == (y > 0.5)).mean() > 0.85, s
    perm = rng.permutation(20)
    shuffled = {s: dict(p) for s, p in data.items()}
    shuffled["sub-02"] = {k: Split(v.keys, v.stimuli, v.x[:, perm], v.y, v.low, v.high) for k, v in data["sub-02"].items()}
    again, _ = fit_pooled_grid(shuffled, positions={**positions, "sub-02": positions["sub-02"][perm]}, solver="ridge")
    np.testing.assert_allclose(again["sub-02"](shuffled["sub-02"]["test"].x), predict["sub-02"](data["sub-02"]["test"].x),
                               rtol=1e-4, atol=1e-5)
