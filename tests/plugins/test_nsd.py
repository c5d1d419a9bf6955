"""The built-in ``nsd`` dataset plugin on generated trees in the real NSD layout (``nsd_fixture``)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from foundation.core import plugins
from foundation.core.api import GuidanceFeatures, GuidancePlugin
from foundation.core.errors import DataError
from foundation.core.hookspecs import hookimpl
from tests.plugins.nsd_fixture import id_code, write_nsd_fixture

PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"
GROUPS = ("V1", "V2", "V3", "V3ab", "hV4", "VO", "PHC", "MT", "LO", "IPS")


class _ProbeGuidance(GuidancePlugin):
    """Deterministic features that reveal which stimulus the dataset handed over.

    low = (image mean, number of captions), high = the image number written in the first caption.
    """

    name = "nsd-test-guidance"
    needs = ("image", "text", "captions")
    batch_size = 16

    def encode(self, stimuli):
        for s in stimuli:
            caps = s.extras["captions"]
            assert caps.dtype.kind == "U" and s.text == caps[0]
        low = np.array([[s.image.mean(), len(s.extras["captions"])] for s in stimuli], dtype=np.float32)
        high = np.array([[float(s.text.split()[1])] for s in stimuli], dtype=np.float32)
        return GuidanceFeatures(low=low, high=high)


def _guidance_hook():
    return [_ProbeGuidance]


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the nsd plugin (until pyproject names it) and the probe guidance; restore afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("foundation_nsd") is None:
            mp.syspath_prepend(str(PLUGINS_DIR))
        mp.setattr(plugins, "_manager", None)
        module = types.ModuleType("nsd_probe_guidance")
        module.foundation_guidance_plugins = hookimpl(_guidance_hook)
        mp.setitem(sys.modules, "nsd_probe_guidance", module)
        if "nsd" not in plugins.dataset_plugins():
            plugins.register_module("foundation_nsd.plugin")
        plugins.register_module("nsd_probe_guidance")
        yield


def _dataset(root, seed=0, **options):
    from foundation_nsd.plugin import NSDDataset, NSDOptions

    return NSDDataset(NSDOptions(**{"val_samples": 3, **options}), root=Path(root), seed=seed)


def _all(ds):
    """subject → list of samples (in yield order)."""
    return {s: list(ds.samples(s)) for s in ds.info().subjects}


def _tokens(samples):
    return np.stack([s.fmri for s in samples])


def _recipe(tmp, root, **options):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe

    recipe = from_dict(Recipe, {
        "name": "nsd-tiny", "seed": 0,
        "datasets": [{"plugin": "nsd", "name": "nsd", "root": str(root), "options": {"val_samples": 3, **options}}],
        "guidance": {"low": "nsd-test-guidance", "high": "nsd-test-guidance"},
        "shards": {"root": str(tmp / "shards"), "samples_per_shard": 8},
        "model": {"dim": 16, "depth": 1, "heads": 2, "head_hidden": 16, "dropout": 0.0},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
                  "warmup_steps": 1, "shuffle_buffer": 8, "eval_batch_size": 8},
        "run": {"dir": str(tmp / "run")},
    })
    validate_recipe(recipe)
    return recipe


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_nsd_fixture(tmp_path_factory.mktemp("nsd") / "NSD", betas_format="both")


@pytest.fixture(scope="module")
def built(fx, tmp_path_factory):
    from foundation.data.shards import build_shards

    tmp = tmp_path_factory.mktemp("nsd-shards")
    recipe = _recipe(tmp, fx.root)
    (index,) = build_shards(recipe, progress=False).values()
    return tmp, recipe, index


def _read_shards(index):
    """(subject, index) → {"meta", "fmri", "labels", "low", "high"} from the tars."""
    out = {}
    for split in ("train", "val", "test"):
        for path, _, _ in index.shards(split):
            members = defaultdict(dict)
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    key, _, ext = m.name.partition(".")
                    data = tar.extractfile(m).read()
                    members[key][ext] = json.loads(data) if ext == "json" else np.load(io.BytesIO(data))
            for d in members.values():
                meta = d["json"]
                out[(meta["subject"], meta["index"])] = {"meta": meta, "fmri": d["fmri.npy"], "labels": d["labels.npy"],
                                                         "low": d["low.npy"], "high": d["high.npy"]}
    return out


def _session_z(fx, subject):
    """Per trial: the session z-score of the id code the V1 voxels carry."""
    codes = np.array([id_code(n) for n in fx.nsd_ids[subject]], dtype=np.float64)
    z, start = np.empty_like(codes), 0
    for n in fx.session_trials[subject]:
        c = codes[start:start + n]
        z[start:start + n] = (c - c.mean()) / c.std()
        start += n
    return z


# ----------------------------------------------------------------------------- sharding through the framework


def test_shard_counts_match_the_trials_of_the_layout(fx, built):
    _, _, index = built
    d = index.data
    assert d["subjects"] == fx.subjects and d["token_names"] == list(GROUPS)
    assert d["label_names"] == [name for _, name in fx.categories]
    for subject in fx.subjects:
        n_trials, n_test = len(fx.nsd_ids[subject]), int(fx.shared[subject].sum())
        assert d["counts"]["test"][subject] == n_test > 0
        assert d["counts"]["train"][subject] + d["counts"]["val"][subject] == n_trials - n_test
        assert d["extra"]["trials"][subject] == n_trials
        assert d["extra"]["samples"][subject] == {k: d["counts"][k][subject] for k in ("train", "val", "test")}
        assert d["extra"]["voxels"][subject]["V1"] == fx.group_voxels(subject, ("V1v", "V1d"))
    assert sum(d["counts"]["val"].values()) == 3
    # auto pca_dim = smallest of min(voxels, training trials - 1) over subjects and groups
    avail = [min(d["extra"]["voxels"][s][g], d["counts"]["train"][s] - 1) for s in fx.subjects for g in GROUPS]
    assert d["token_shape"] == [len(GROUPS), min(avail)] == [10, d["extra"]["pca_dim"]]


def test_trial_image_label_mapping_on_a_known_answer(fx, built):
    _, _, index = built
    shards = _read_shards(index)
    assert len(shards) == sum(len(v) for v in fx.nsd_ids.values())
    for subject in fx.subjects:
        z = _session_z(fx, subject)
        v1 = []
        for t, nsd in enumerate(fx.nsd_ids[subject]):
            s = shards[(subject, t)]
            assert s["meta"]["stimulus"] == f"nsd-{nsd:05d}"
            assert (s["meta"]["split"] == "test") == bool(fx.shared[subject][t])
            np.testing.assert_array_equal(s["labels"], fx.labels[nsd])
            # the stimulus the guidance saw was the right image with its captions
            assert s["low"][0] == nsd % 256 and s["low"][1] == len(fx.captions[nsd]) and s["high"][0] == nsd
            v1.append(s["fmri"][0].astype(np.float64))
        v1 = np.array(v1)
        # V1 carries only the image id: its first PCA score is sqrt(voxels) * (session z-score - train mean)
        slope, intercept = np.polyfit(z, v1[:, 0], 1)
        assert slope == pytest.approx(np.sqrt(fx.group_voxels(subject, ("V1v", "V1d"))), rel=2e-3)
        np.testing.assert_allclose(v1[:, 0], slope * z + intercept, atol=1e-2)
        np.testing.assert_allclose(v1[:, 1:], 0, atol=1e-2)


def test_pca_bases_are_saved_and_project_new_scans(fx, built):
    from foundation_nsd.pca import load_bases, project

    _, _, index = built
    shards = _read_shards(index)
    for subject in fx.subjects:
        bases = load_bases(index.root / "nsd_pca" / f"{subject}.npz")
        assert bases.groups == GROUPS and bases.grid == fx.grid and bases.pca_dim == index.data["token_shape"][1]
        tokens = project(fx.read_session(subject, 1), subject, bases)
        stored = np.stack([shards[(subject, t)]["fmri"] for t in range(fx.session_trials[subject][0])])
        np.testing.assert_allclose(tokens, stored.astype(np.float32), atol=2e-2, rtol=2e-3)
    with pytest.raises(DataError, match="subj01.*subj02"):
        project(fx.read_session("subj02", 1), "subj02", load_bases(index.root / "nsd_pca" / "subj01.npz"))


def test_trains_a_few_steps_through_the_spine(built):
    from foundation.workflows.train import train

    tmp, recipe, _ = built
    path = train(recipe, progress=False)
    assert Path(path).is_file() and (tmp / "run" / "metrics.json").is_file()
    metrics = json.loads(Path(path).read_text())
    assert set(metrics["test"]["per_subject"]) == {"nsd/subj01", "nsd/subj02"}


def test_predict_raw_betas_session_matches_its_shards(fx, built, tmp_path):
    """`foundation predict RUN betas_session01.nii.gz --raw --subject subj01`: the plugin's encode_raw
    projects the session with the saved PCA bases; the predictions are those of the session's shards."""
    from foundation.cli import main
    from foundation.workflows.predict import predict_run
    from foundation.workflows.train import train

    tmp, recipe, index = built
    run = tmp / "run"
    if not (run / "metrics.json").is_file():
        train(recipe, progress=False)
    n = fx.session_trials["subj01"][0]
    session = fx.betas_path("subj01", 1)
    from_raw = predict_run(run, session, subject="subj01", raw=True, progress=False)
    from_shards = {int(r["key"].rsplit("/", 1)[1]): r for r in predict_run(run, index.root, subject="subj01",
                                                                             progress=False)}
    assert [r["key"] for r in from_raw] == list(range(n))
    for r in from_raw:
        np.testing.assert_allclose(list(r["probabilities"].values()),
                                   list(from_shards[r["key"]]["probabilities"].values()), atol=2e-3)
    # the same from the command line, and without the NSD download on this machine (root is not needed)
    moved = tmp_path / "session01.nii.gz"
    moved.write_bytes(session.read_bytes())
    out = tmp_path / "p.json"
    assert main(["predict", str(run), str(moved), "--raw", "--subject", "nsd/subj01", "--output", str(out),
                 "--no-progress"]) == 0
    assert [r["probabilities"] for r in json.loads(out.read_text())] == [r["probabilities"] for r in from_raw]
    from foundation.workflows.raw import run_dataset_plugin

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["datasets"][0]["root"] = str(tmp_path / "elsewhere")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        plugin = run_dataset_plugin(run, "nsd")
        assert plugin.root is None
        assert predict_run(run, moved, subject="subj01", raw=True, progress=False) == from_raw
    finally:
        config["datasets"][0]["root"] = str(fx.root)
        (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_trains_with_per_subject_alignment_on_pca_tokens(built):
    """model.alignment works through the plugin interface on NSD's per-subject PCA tokens."""
    import dataclasses

    from foundation.engine.checkpoint import load_model
    from foundation.workflows.train import train

    tmp, recipe, _ = built
    aligned = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, alignment="guidance-ridge",
                                                                    alignment_dim=4),
                                  run=dataclasses.replace(recipe.run, dir=str(tmp / "run-aligned")))
    metrics = json.loads(Path(train(aligned, progress=False)).read_text())
    assert set(metrics["test"]["per_subject"]) == {"nsd/subj01", "nsd/subj02"}
    model, _ = load_model(tmp / "run-aligned" / "best")
    assert model.alignments["nsd"].fitted.tolist() == [True, True]
    fit = json.loads((tmp / "run-aligned" / "alignment" / "fit.json").read_text())
    assert set(fit) == {"nsd/subj01", "nsd/subj02"} and all(v["n"] >= 3 for v in fit.values())


# ----------------------------------------------------------------------------- the plugin on its own


def test_nifti_hdf5_and_hemisphere_roi_files_give_the_same_tokens(fx, tmp_path):
    nifti, hdf5 = _all(_dataset(fx.root)), _all(_dataset(fx.root, betas_format="hdf5"))
    hemi = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti", roi_files="hemi")
    assert not (hemi.root / "nsddata/ppdata/subj01/func1pt8mm/roi/Kastner2015.nii.gz").exists()
    halves = _all(_dataset(hemi.root))
    for subject in fx.subjects:
        assert [s.stimulus for s in nifti[subject]] == [s.stimulus for s in hdf5[subject]]
        np.testing.assert_array_equal(_tokens(nifti[subject]), _tokens(hdf5[subject]))
        np.testing.assert_array_equal(_tokens(nifti[subject]), _tokens(halves[subject]))


def test_pca_is_fitted_on_training_trials_only(tmp_path):
    fx = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti")
    subject = "subj01"

    def fit(**options):
        ds = _dataset(fx.root, **options)
        return ds, ds.fit_pca(subject), {s.index: s for s in ds.samples(subject)}

    _ds, before, samples = fit()
    split = np.array([samples[t].split for t in range(len(samples))])
    n1 = fx.session_trials[subject][0]
    held_out = [t for t in range(n1) if split[t] != "train"]
    a, b = held_out[0], next(t for t in held_out[1:] if fx.nsd_ids[subject][t] != fx.nsd_ids[subject][held_out[0]])
    original = fx.read_session(subject, 1)

    # swapping two held-out trials keeps every voxel's session mean/std: the basis must not move
    swapped = original.copy()
    swapped[..., [a, b]] = swapped[..., [b, a]]
    fx.write_session(subject, 1, swapped)
    _, after, samples2 = fit()
    for g in GROUPS:
        np.testing.assert_allclose(after.bases[g].components, before.bases[g].components, atol=1e-5)
        np.testing.assert_allclose(after.bases[g].mean, before.bases[g].mean, atol=1e-5)
    np.testing.assert_allclose(samples2[a].fmri, samples[b].fmri, atol=1e-4)
    train_t = [t for t in range(len(split)) if split[t] == "train"]
    np.testing.assert_allclose(_tokens([samples2[t] for t in train_t]), _tokens([samples[t] for t in train_t]), atol=1e-4)

    # without z-scoring, any change to a held-out trial leaves the basis alone; a training trial moves it
    fx.write_session(subject, 1, original)
    _, raw_before, _ = fit(zscore=False)
    changed = original.copy()
    changed[..., a] = np.clip(changed[..., a].astype(np.int32) * 5 + 999, -32768, 32767).astype(np.int16)
    fx.write_session(subject, 1, changed)
    _, raw_after, _ = fit(zscore=False)
    for g in GROUPS:
        np.testing.assert_array_equal(raw_after.bases[g].components, raw_before.bases[g].components)
    changed = original.copy()
    changed[..., train_t[0]] = np.clip(changed[..., train_t[0]].astype(np.int32) * 5 + 999, -32768, 32767)
    fx.write_session(subject, 1, changed)
    _, moved, _ = fit(zscore=False)
    assert not np.allclose(moved.bases["V2"].mean, raw_before.bases["V2"].mean)


def test_zscoring_is_per_voxel_per_session(tmp_path):
    fx = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti")
    before = _all(_dataset(fx.root))["subj01"]
    raw_before = _all(_dataset(fx.root, zscore=False))["subj01"]
    # an affine change of each voxel in session 2 only (gain and offset per voxel)
    s2 = fx.read_session("subj01", 2).astype(np.int32)
    gain = 1 + (np.arange(s2[..., 0].size).reshape(s2.shape[:3]) % 3)
    fx.write_session("subj01", 2, np.clip(s2 * gain[..., None] + 700, -32768, 32767).astype(np.int16))
    after = _all(_dataset(fx.root))["subj01"]
    np.testing.assert_allclose(_tokens(after), _tokens(before), atol=1e-3)
    assert not np.allclose(_tokens(_all(_dataset(fx.root, zscore=False))["subj01"]), _tokens(raw_before), atol=1e-3)


def test_pca_dim_auto_and_fixed(fx):
    auto = _dataset(fx.root)
    k = auto.info().token_shape[1]
    avail = auto.info().extra["pca_available"]
    assert k == min(min(v.values()) for v in avail.values())
    small, big = _dataset(fx.root, pca_dim=2), _dataset(fx.root, pca_dim=k + 3)
    assert small.info().token_shape == (10, 2) and big.info().token_shape == (10, k + 3)
    a, s, b = _all(auto), _all(small), _all(big)
    for subject in fx.subjects:
        ta, ts, tb = _tokens(a[subject]), _tokens(s[subject]), _tokens(b[subject])
        np.testing.assert_allclose(ts, ta[..., :2], atol=1e-4)
        np.testing.assert_allclose(tb[..., :k], ta, atol=1e-4)
        for g, name in enumerate(GROUPS):  # zero-padded beyond what a group offers
            assert np.all(tb[:, g, avail[subject][name]:] == 0)
            if avail[subject][name] > k:
                assert np.abs(tb[:, g, k]).max() > 0


def test_pca_rows_and_scatter_paths_agree():
    from foundation_nsd.pca import CovAccumulator, fit_basis

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 30)) * np.linspace(4, 0.5, 30) + 3).astype(np.float32)
    kept, folded = CovAccumulator(30), CovAccumulator(30)
    kept.add(x)
    folded.add(x[:10])
    folded._fold()  # mean + scatter from here on
    for i in range(10, 50, 10):
        folded.add(x[i:i + 10])
    assert kept.rows is not None and folded.rows is None and folded.n == 50
    a, b = fit_basis(kept, 5), fit_basis(folded, 5)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)
    np.testing.assert_allclose(a.components, b.components, atol=1e-4)
    np.testing.assert_allclose(a.explained_variance, b.explained_variance, rtol=1e-4)
    np.testing.assert_allclose(a.explained_variance, np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1][:5], rtol=1e-4)


def test_coco_categories_from_the_tail_or_a_full_parse(tmp_path):
    from foundation_nsd.coco import read_categories, read_instance_categories

    cats = [{"supercategory": "x", "id": 90, "name": "toothbrush"}, {"supercategory": "y", "id": 2, "name": "bicycle"}]
    anns = [{"segmentation": {"counts": "abc", "size": [2, 2]}, "image_id": 7, "category_id": 90, "id": 1}]
    first = tmp_path / "categories_first.json"  # not where COCO puts them: found by a full parse
    first.write_text(json.dumps({"categories": cats, "images": [{"file_name": "a.jpg", "id": 7}], "annotations": anns}))
    assert read_categories(first) == [(2, "bicycle"), (90, "toothbrush")]
    assert read_instance_categories(first) == ({7: {90}}, [(2, "bicycle"), (90, "toothbrush")])


def test_repeats_can_be_averaged(fx):
    sep = _all(_dataset(fx.root, val_samples=0))
    avg_ds = _dataset(fx.root, val_samples=0, repeats="average")
    avg = _all(avg_ds)
    for subject in fx.subjects:
        ids = fx.nsd_ids[subject]
        assert len(avg[subject]) == len(set(ids.tolist())) < len(ids)
        assert avg_ds.info().extra["samples"][subject]["test"] == len(set(ids[fx.shared[subject]].tolist()))
        for sample in avg[subject]:
            nsd = int(sample.stimulus.split("-")[1])
            trials = np.flatnonzero(ids == nsd)
            assert sample.index == trials[0]
            assert {sep[subject][t].split for t in trials} == {sample.split}
            np.testing.assert_allclose(sample.fmri, _tokens([sep[subject][t] for t in trials]).mean(0), atol=1e-4)


def test_validation_draw_is_seeded_and_keeps_repeats_together(fx):
    def val(seed, **o):
        ds = _dataset(fx.root, seed=seed, val_samples=6, **o)
        return {(s, x.index) for s, xs in _all(ds).items() for x in xs if x.split == "val"}, ds

    first, _ds = val(0)
    assert len(first) == 6 and val(0)[0] == first and val(1)[0] != first
    for subject in fx.subjects:
        ids = fx.nsd_ids[subject]
        for _, t in (v for v in first if v[0] == subject):
            assert not fx.shared[subject][t]
            assert all((subject, u) in first for u in np.flatnonzero(ids == ids[t]))  # all repeats in val
    assert len(val(0, val_unit="trial")[0]) == 6


# ----------------------------------------------------------------------------- bad input is named


def test_missing_design_file_is_named(tmp_path):
    fx = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti")
    path = fx.root / "nsddata/experiments/nsd/nsd_expdesign.mat"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"NSD design file nsd_expdesign\.mat not found: .*nsd_expdesign\.mat") as e:
        _dataset(fx.root).info()
    assert isinstance(e.value, DataError)
    (fx.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5").unlink()
    with pytest.raises(DataError, match=r"NSD stimulus images nsd_stimuli\.hdf5 not found: .*nsd_stimuli\.hdf5"):
        list(_dataset(fx.root).stimuli(["nsd-00001"]))
    for split in ("train2017", "val2017"):
        (fx.root / f"coco/annotations/instances_{split}.json").unlink()
    with pytest.raises(DataError, match=r"COCO instances annotations instances_train2017\.json not found .*coco_annotations"):
        _dataset(fx.root)._categories()


def test_subject_without_sessions_and_session_gaps_are_named(tmp_path):
    fx = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti")
    empty = fx.root / "nsddata_betas/ppdata/subj03/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match=rf"'subj03' has no sessions.*{empty}"):
        _dataset(fx.root).info()
    fx.betas_path("subj01", 1).unlink()
    with pytest.raises(DataError, match=r"'subj01': betas sessions \[1\] are missing"):
        _dataset(fx.root, subjects=["subj01"]).info()


def test_roi_label_not_in_ctab_is_named(fx):
    with pytest.raises(DataError, match=r"'V9x' \(group 'V1'\) is not in the colour table .*Kastner2015\.mgz\.ctab.*1 V1v"):
        _dataset(fx.root, roi_groups={"V1": ["v1v", "V9x"]}).info()
    assert _dataset(fx.root, roi_groups={"early": ["v1V", "V1D", "v2v"]}).info().token_names == ("early",)


def test_grid_mismatch_between_betas_and_roi_file_is_named(tmp_path):
    import nibabel as nib

    fx = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti")
    roi = fx.root / "nsddata/ppdata/subj02/func1pt8mm/roi/Kastner2015.nii.gz"
    nib.save(nib.Nifti1Image(fx.roi_labels["subj02"][:, :, :4].astype(np.float32), np.eye(4)), str(roi))
    with pytest.raises(DataError, match=r"'subj02': ROI grid \(6, 7, 4\) of .*Kastner2015\.nii\.gz does not match the "
                                        r"betas grid \(6, 7, 5\) of .*betas_session01\.nii\.gz"):
        _dataset(fx.root).info()


def test_nan_in_a_session_is_named(tmp_path):
    fx = write_nsd_fixture(tmp_path / "NSD", betas_format="nifti")
    betas = fx.read_session("subj02", 1).astype(np.float32)
    x, y, z = np.argwhere(np.isin(fx.roi_labels["subj02"], (3, 4)))[0]
    betas[x, y, z, 5] = np.nan
    fx.write_session("subj02", 1, betas)
    ds = _dataset(fx.root)
    ds.info()  # headers only: fine
    with pytest.raises(DataError, match=r"betas_session01\.nii\.gz \(subject 'subj02', session 1\): 1 NaN"):
        list(ds.samples("subj02"))


# ----------------------------------------------------------------------------- issue 15: protocol


def test_test_repeats_average_only_the_test_split(fx):
    """test_repeats: average → one test sample per (subject, image), the mean of its repeats; train
    and validation stay single trials (issue 15, item 6)."""
    sep = _all(_dataset(fx.root, val_samples=4))
    ds = _dataset(fx.root, val_samples=4, test_repeats="average")
    mixed = _all(ds)
    repeated = 0
    for subject in fx.subjects:
        ids = fx.nsd_ids[subject]
        by_split = {k: [x for x in mixed[subject] if x.split == k] for k in ("train", "val", "test")}
        for k in ("train", "val"):
            assert [x.index for x in by_split[k]] == [x.index for x in sep[subject] if x.split == k]
        test_ids = ids[fx.shared[subject]]
        assert len(by_split["test"]) == len(set(test_ids.tolist()))
        repeated += len(test_ids) - len(set(test_ids.tolist()))
        assert ds.info().extra["samples"][subject]["test"] == len(by_split["test"])
        for sample in by_split["test"]:
            trials = np.flatnonzero(ids == int(sample.stimulus.split("-")[1]))
            np.testing.assert_allclose(sample.fmri, _tokens([sep[subject][t] for t in trials]).mean(0), atol=1e-4)
    assert repeated > 0, "the fixture needs repeated test images"
    assert ds.info().extra["test_repeats"] == "average"
    assert _dataset(fx.root).info().extra["test_repeats"] == "separate"
    with pytest.raises(ValueError, match="test_repeats"):
        _dataset(fx.root, repeats="average", test_repeats="separate")


def test_single_subject_recipe_gets_its_own_validation_draw(fx, built, tmp_path):
    """A recipe narrowed to one subject draws all val_samples from that subject (issue 15, item 5);
    the joint draw spreads them over all subjects."""
    from foundation.data.shards import build_shards, plan

    _, joint_recipe, joint = built
    joint_val = joint.data["counts"]["val"]
    assert sum(joint_val.values()) == 3
    subject = min(joint_val, key=joint_val.get)  # the subject with the fewest joint validation samples
    assert joint_val[subject] < 3
    recipe = _recipe(tmp_path, fx.root)
    recipe.datasets[0].subjects = [subject]
    (build,) = plan(recipe)
    assert build.plugin.options.subjects == [subject]
    (index,) = build_shards(recipe, progress=False).values()
    assert index.data["subjects"] == [subject]
    assert index.data["counts"]["val"] == {subject: 3}
    # an explicit options.subjects is the recipe's own choice and is kept
    two = _recipe(tmp_path / "b", fx.root, subjects=list(fx.subjects))
    two.datasets[0].subjects = [subject]
    assert plan(two)[0].plugin.options.subjects == list(fx.subjects)
