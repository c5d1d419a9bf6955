"""The synthetic world: seeded, NSD-like and HCP-like modes, planted subject variability, rendering."""

from __future__ import annotations

import re

import numpy as np
import pytest

from foundation_synthetic.plugin import PlantedGuidance, SyntheticDataset
from foundation_synthetic.render import caption, render_image
from foundation_synthetic.world import CATEGORY_NAMES, SyntheticOptions, World

ROI = {"n_subjects": 3, "stimuli_per_subject": 30, "shared_test": 10, "n_rois": 3, "token_dim": 8}
VOLUME = {"mode": "volume", "n_subjects": 2, "grid": (6, 7, 6), "seconds": 60}


def world(base: dict, **kw) -> World:
    return World(SyntheticOptions(**{**base, **kw}))


def _same_subject(a, b) -> bool:
    return (np.array_equal(a.stimulus_rows, b.stimulus_rows) and a.splits == b.splits
            and np.array_equal(a.fmri, b.fmri)
            and (a.mask is None) == (b.mask is None) and (a.mask is None or np.array_equal(a.mask, b.mask)))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("base", [ROI, VOLUME], ids=["roi", "volume"])
def test_same_options_same_world_other_seed_other_world(base: dict) -> None:
    a, b, c = world(base), world(base), world(base, world_seed=1)
    assert a.stimuli.ids == b.stimuli.ids
    for field in ("labels", "low", "high"):
        np.testing.assert_array_equal(getattr(a.stimuli, field), getattr(b.stimuli, field))
    for s in a.subjects:
        assert _same_subject(a.subject(s), b.subject(s))
    assert not np.array_equal(a.stimuli.low, c.stimuli.low)
    assert not np.array_equal(a.subject("sub-01").fmri, c.subject("sub-01").fmri)


def test_volume_subject_does_not_depend_on_the_number_of_subjects() -> None:
    few, many = world(VOLUME, n_subjects=2), world(VOLUME, n_subjects=5)
    for s in few.subjects:
        assert _same_subject(few.subject(s), many.subject(s))


def test_volume_area_maps_are_the_answer_key_of_the_recording() -> None:
    """``area_maps`` gives the maps and drive the recording was made from: without noise, ``drive @ maps.T``
    z-scored per voxel is the subject's recording; other subjects have other maps; ROI worlds have none."""
    quiet = world(VOLUME, noise=0.0)
    maps, drive = quiet.area_maps("sub-01")
    data = quiet.subject("sub-01")
    assert maps.shape == (int(data.mask.sum()), quiet.o.n_areas) and drive.shape == (len(data.stimulus_rows), 12)
    signal = drive @ maps.T
    np.testing.assert_allclose((signal - signal.mean(0)) / (signal.std(0) + 1e-6), data.fmri, atol=1e-4)
    other, _ = quiet.area_maps("sub-02")
    assert other.shape[1] == maps.shape[1] and not np.allclose(other[: len(maps)], maps[: len(other)])
    with pytest.raises(ValueError, match="volume mode only"):
        world(ROI).area_maps("sub-01")


def test_roi_stimulus_ids_and_splits_do_not_depend_on_the_number_of_subjects() -> None:
    few, many = world(ROI, n_subjects=3), world(ROI, n_subjects=5)
    for s in few.subjects:
        a, b = few.subject(s), many.subject(s)
        assert [few.stimuli.ids[r] for r in a.stimulus_rows] == [many.stimuli.ids[r] for r in b.stimulus_rows]
        assert a.splits == b.splits


def test_roi_subject_data_do_not_depend_on_the_number_of_subjects() -> None:
    few, many = world(ROI, n_subjects=3), world(ROI, n_subjects=5)
    assert _same_subject(few.subject("sub-01"), many.subject("sub-01"))


# ----------------------------------------------------------------------------- ROI (NSD-like) mode


def test_roi_mode_stimuli_splits_and_responses() -> None:
    w = world(ROI)
    ids = w.stimuli.ids
    shared = {f"shared-{i:05d}" for i in range(10)}
    own = {}
    for s in w.subjects:
        d = w.subject(s)
        seen = [ids[r] for r in d.stimulus_rows]
        assert len(seen) == len(set(seen)) == 40
        by_split = {split: {sid for sid, sp in zip(seen, d.splits) if sp == split} for split in ("train", "val", "test")}
        assert [len(by_split[k]) for k in ("train", "val", "test")] == [27, 3, 10]
        assert by_split["test"] == shared
        own[s] = by_split["train"] | by_split["val"]
        assert d.fmri.shape == (40, 3, 8) and d.fmri.dtype == np.float32
        assert np.isfinite(d.fmri).all() and d.fmri.std() > 0.1
        labels = w.stimuli.labels[d.stimulus_rows]
        assert labels.shape == (40, 12) and set(np.unique(labels)) <= {0, 1} and (labels.sum(1) >= 1).all()
        assert d.mask is None
    for a in w.subjects:
        for b in w.subjects:
            if a < b:
                assert not own[a] & own[b]
    # more than one category per stimulus happens (multi-label), and every category occurs
    all_labels = w.stimuli.labels
    assert (all_labels.sum(1) > 1).any() and all_labels.any(0).all()


def test_roi_mode_through_the_plugin() -> None:
    plugin = SyntheticDataset(SyntheticOptions(**ROI), root=None, seed=0)
    info = plugin.info()
    assert info.kind == "roi" and info.token_shape == (3, 8) and info.subjects == ("sub-01", "sub-02", "sub-03")
    assert info.label_names == CATEGORY_NAMES[:12] and info.token_names == ("roi1", "roi2", "roi3")
    samples = list(plugin.samples("sub-02"))
    assert [s.index for s in samples] == list(range(40))
    assert all(s.fmri.shape == (3, 8) and s.subject == "sub-02" for s in samples)
    stimuli = list(plugin.stimuli([samples[0].stimulus, "shared-00003"]))
    assert [s.id for s in stimuli] == [samples[0].stimulus, "shared-00003"]
    for st in stimuli:
        assert st.image.shape == (32, 32, 3) and st.image.dtype == np.uint8 and st.text.startswith("a ")
    feats = PlantedGuidance(PlantedGuidance.Options()).encode(stimuli)
    row = plugin.world.stimuli.position["shared-00003"]
    np.testing.assert_array_equal(feats.high[1], plugin.world.stimuli.high[row])
    np.testing.assert_array_equal(feats.low[1], plugin.world.stimuli.low[row])


# ----------------------------------------------------------------------------- volume (HCP-like) mode


def test_volume_mode_shared_movie_contiguous_split_own_masks() -> None:
    w = world(VOLUME)
    a, b = w.subject("sub-01"), w.subject("sub-02")
    np.testing.assert_array_equal(a.stimulus_rows, np.arange(60))
    np.testing.assert_array_equal(a.stimulus_rows, b.stimulus_rows)
    assert a.splits == b.splits == ["train"] * 42 + ["val"] * 6 + ["test"] * 12
    assert a.mask.shape == b.mask.shape == (6, 7, 6) and a.mask.dtype == bool
    assert not np.array_equal(a.mask, b.mask)
    for d in (a, b):
        assert d.fmri.shape == (60, int(d.mask.sum())) and np.isfinite(d.fmri).all()
    plugin = SyntheticDataset(SyntheticOptions(**VOLUME), root=None, seed=0)
    assert [s.stimulus for s in plugin.samples("sub-01")] == [s.stimulus for s in plugin.samples("sub-02")]


def _lag_correlation(fmri: np.ndarray, lag: int) -> float:
    return float(np.mean([np.corrcoef(fmri[t], fmri[t + lag])[0, 1] for t in range(len(fmri) - lag)]))


@pytest.mark.parametrize("world_seed", [0, 1])
def test_volume_mode_is_temporally_correlated(world_seed: int) -> None:
    w = world(VOLUME, world_seed=world_seed)
    for s in w.subjects:
        fmri = w.subject(s).fmri
        near, far = _lag_correlation(fmri, 1), _lag_correlation(fmri, 30)
        assert near > 0.15 and near > far + 0.2, (s, near, far)
    # the planted movie codes themselves drift smoothly: one second apart is closer than half a minute
    low = w.stimuli.low
    assert np.linalg.norm(np.diff(low, axis=0), axis=1).mean() < np.linalg.norm(low[30:] - low[:-30], axis=1).mean()


# ----------------------------------------------------------------------------- subject variability


def _token_agreement(variability: float, world_seed: int) -> float:
    """Mean over ROIs of the correlation between two subjects' tokens for the same shared stimuli.

    Tokens live in each ROI's canonical coordinates, so identical topographies give correlated
    tokens (up to noise); subject-specific levels, gains, mirrored components and map distortions
    decorrelate them.
    """
    w = world(ROI, n_subjects=2, stimuli_per_subject=100, shared_test=60, n_rois=6,
              noise=0.5, subject_variability=variability, world_seed=world_seed)
    a, b = (w.subject(s) for s in w.subjects)
    assert a.splits[-60:] == b.splits[-60:] == ["test"] * 60
    np.testing.assert_array_equal(a.stimulus_rows[-60:], b.stimulus_rows[-60:])
    a, b = a.fmri[-60:], b.fmri[-60:]
    return float(np.mean([np.corrcoef(a[:, k].ravel(), b[:, k].ravel())[0, 1] for k in range(a.shape[1])]))


def test_subject_variability_controls_how_alike_subjects_are() -> None:
    alike = [_token_agreement(0.0, seed) for seed in range(3)]
    varied = [_token_agreement(1.0, seed) for seed in range(3)]
    assert all(a > v + 0.2 for a, v in zip(alike, varied)), (alike, varied)
    assert np.mean(alike) > 0.6, alike
    assert np.mean(varied) < np.mean(alike) - 0.4, (alike, varied)


# ----------------------------------------------------------------------------- rendering


def test_render_image_shape_and_content() -> None:
    rng = np.random.default_rng(0)
    low = rng.normal(size=16)
    a = np.zeros(12, np.uint8)
    a[[0, 3]] = 1
    b = np.zeros(12, np.uint8)
    b[[5]] = 1
    img_a = render_image(low, a, size=32)
    assert img_a.shape == (32, 32, 3) and img_a.dtype == np.uint8
    assert np.array_equal(img_a, render_image(low, a, size=32))
    assert not np.array_equal(img_a, render_image(low, b, size=32))
    assert not np.array_equal(img_a, render_image(rng.normal(size=16), a, size=32))
    assert render_image(low, a, size=48).shape == (48, 48, 3)


def test_caption_names_the_present_categories() -> None:
    names = CATEGORY_NAMES[:12]
    low = np.full(16, 0.3)
    labels = np.zeros(12, np.uint8)
    labels[[1, 3, 9]] = 1
    text = caption(low, labels, names)
    words = set(re.findall(r"[a-z]+", text))
    assert {"dog", "car", "chair"} <= words
    assert not words & (set(names) - {"dog", "car", "chair"})
    single = np.zeros(12, np.uint8)
    single[4] = 1
    assert caption(low, single, names).endswith("picture of a tree")
    assert caption(low, np.zeros(12, np.uint8), names).endswith("nothing in particular")


# ----------------------------------------------------------------------------- one population, two datasets


def _high_code_per_label(w: World) -> dict[str, np.ndarray]:
    """Least-squares map from a dataset's labels to the high-level codes: one row per label name."""
    st = w.stimuli
    x = np.c_[st.labels.astype(np.float64), np.ones(len(st.labels))]
    coef = np.linalg.lstsq(x, st.high.astype(np.float64), rcond=None)[0][:-1]
    return dict(zip(w.label_names, coef))


def test_population_semantics_are_shared_by_an_roi_and_a_volume_dataset() -> None:
    roi = world(ROI, semantics="population", stimuli_per_subject=200)
    vol = world({**VOLUME, "seconds": 600}, semantics="population", label_offset=4)
    assert roi.label_names == CATEGORY_NAMES[:12] and vol.label_names == CATEGORY_NAMES[4:16]
    assert roi.stimuli.labels.shape[1] == vol.stimuli.labels.shape[1] == 12
    np.testing.assert_array_equal(roi._semantics["embed"], vol._semantics["embed"])
    # one semantic space: a category's typical high-level code is the same in both datasets ...
    a, b = _high_code_per_label(roi), _high_code_per_label(vol)
    common = sorted(set(a) & set(b))
    assert len(common) == 8, common
    same = [np.corrcoef(a[n], b[n])[0, 1] for n in common]
    assert np.mean(same) > 0.7, dict(zip(common, same))
    # ... while two datasets with their own semantics (the default) share none: recipes/synthetic_multi.yaml's
    # 12 and 8 categories (the default draws a dataset's semantics from (world_seed, n_categories))
    own_roi, own_vol = world(ROI, stimuli_per_subject=200), world({**VOLUME, "seconds": 600}, n_categories=8)
    a, b = _high_code_per_label(own_roi), _high_code_per_label(own_vol)
    other = [np.corrcoef(a[n], b[n])[0, 1] for n in sorted(set(a) & set(b))]
    assert np.mean(other) < 0.3 and np.mean(same) - np.mean(other) > 0.5, (same, other)


def test_population_datasets_have_different_people_and_the_default_world_is_unchanged() -> None:
    roi = world(ROI, semantics="population")
    again = world(ROI, semantics="population")
    assert _same_subject(roi.subject("sub-01"), again.subject("sub-01"))
    # the subject streams carry the mode in a population: sub-01 of the ROI dataset is not sub-01 of the
    # volume dataset (in the default world they share one stream)
    assert roi._subject_key == ("subject", "roi") and world(ROI)._subject_key == ("subject",)
    # the default (semantics: dataset) is the world every earlier result ran on: labels drawn over its own categories
    assert world(ROI)._semantics["embed"].shape == (12, 16)
    assert roi._semantics["embed"].shape == (len(CATEGORY_NAMES), 16)


@pytest.mark.parametrize("bad", [dict(label_offset=4), dict(semantics="population", label_offset=10),
                                 dict(semantics="population", label_offset=-1)])
def test_label_offset_is_checked(bad: dict) -> None:
    with pytest.raises(ValueError, match="label_offset"):
        SyntheticOptions(**{**ROI, **bad})
