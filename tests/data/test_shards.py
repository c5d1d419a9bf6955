"""The shard writer: bytes in = tensors out, index.json, reuse and resume, bad input, directory hash."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from foundation.core.api import Sample
from foundation.data import shards as shards_module
from foundation.data.index import read_index
from foundation.data.loader import DatasetStream
from foundation.data.shards import build_shards, find_shards, plan
from foundation.core.errors import DataError, PluginError
from foundation_synthetic.plugin import PlantedGuidance, SyntheticDataset

from .conftest import ROI, VOLUME, BadDataset, make_recipe, tmp_leftovers


def _read_back(index, subject: str) -> dict[str, dict]:
    """Every sample of ``subject`` read through the evaluation loader, by key."""
    stream = DatasetStream(index, subjects=[subject])
    out = {}
    for split in ("train", "val", "test"):
        for batch in stream.eval_batches(split, 5):
            for i, key in enumerate(batch.keys):
                assert key not in out, f"{key} read twice"
                out[key] = {"split": split, "subject": batch.subjects[i], "fmri": batch.fmri[i].numpy(),
                            "labels": batch.labels[i].numpy(), "low": batch.low[i].numpy(),
                            "high": batch.high[i].numpy(), "dtype": batch.fmri.dtype}
    return out


def _plugin(recipe):
    return plan(recipe)[0].plugin


# ----------------------------------------------------------------------------- round trip


def test_roi_round_trip_bytes_in_equal_tensors_out(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)
    index = build_shards(recipe, progress=False)["synthetic"]
    plugin = _plugin(recipe)
    st = plugin.world.stimuli
    subject = "sub-02"
    back = _read_back(index, subject)
    samples = list(plugin.samples(subject))
    assert len(back) == len(samples) == 40
    for s in samples:
        key = f"synthetic/{subject}/{s.index:07d}"
        got = back[key]
        assert got["split"] == s.split and got["subject"] == f"synthetic/{subject}"
        assert got["fmri"].dtype == np.float16 and got["fmri"].shape == (3, 8)
        np.testing.assert_array_equal(got["fmri"], np.float16(s.fmri))
        np.testing.assert_array_equal(got["labels"], s.labels.astype(np.float32))
        row = st.position[s.stimulus]
        np.testing.assert_array_equal(got["low"], np.float16(st.low[row]))
        np.testing.assert_array_equal(got["high"], np.float16(st.high[row]))


def test_volume_round_trip_in_mask_voxels_and_masks(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, VOLUME, samples_per_shard=16)
    index = build_shards(recipe, progress=False)["synthetic"]
    plugin = _plugin(recipe)
    st = plugin.world.stimuli
    assert index.data["kind"] == "volume" and tuple(index.data["grid"]) == (6, 7, 6)
    voxels = {s: int(plugin.mask(s).sum()) for s in plugin.world.subjects}
    assert index.data["voxels"] == voxels
    assert len(set(voxels.values())) > 1  # masks differ, so padding is exercised
    pad = max(voxels.values())
    for subject in plugin.world.subjects:
        mask = plugin.mask(subject)
        stored = np.load(index.root / "masks" / f"{subject}.npy", allow_pickle=False)
        assert stored.dtype == bool
        np.testing.assert_array_equal(stored, mask)
        np.testing.assert_array_equal(index.mask(subject), mask)
        back = _read_back(index, subject)
        samples = list(plugin.samples(subject))
        assert len(back) == len(samples) == 60
        n = voxels[subject]
        for s in samples:
            got = back[f"synthetic/{subject}/{s.index:07d}"]
            assert got["fmri"].shape == (pad,) and got["split"] == s.split
            np.testing.assert_array_equal(got["fmri"][:n], np.float16(s.fmri))
            assert not got["fmri"][n:].any()
            np.testing.assert_array_equal(got["labels"], s.labels.astype(np.float32))
            row = st.position[s.stimulus]
            np.testing.assert_array_equal(got["low"], np.float16(st.low[row]))
            np.testing.assert_array_equal(got["high"], np.float16(st.high[row]))


# ----------------------------------------------------------------------------- index.json


def test_index_counts_and_each_stimulus_encoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    original = PlantedGuidance.encode

    def counting_encode(self, stimuli):
        encoded.extend(s.id for s in stimuli)
        return original(self, stimuli)

    monkeypatch.setattr(PlantedGuidance, "encode", counting_encode)
    recipe = make_recipe(tmp_path)
    index = build_shards(recipe, progress=False)["synthetic"]
    plugin = _plugin(recipe)
    data = index.data

    expected = {split: {} for split in ("train", "val", "test")}
    stimuli: set[str] = set()
    for subject in plugin.world.subjects:
        samples = list(plugin.samples(subject))
        by_split = collections.Counter(s.split for s in samples)
        for split in expected:
            expected[split][subject] = by_split[split]
        stimuli.update(s.stimulus for s in samples)
    assert data["counts"] == expected
    assert expected["test"] == {"sub-01": 10, "sub-02": 10, "sub-03": 10}
    for split, per_subject in expected.items():
        entries = data["shards"][split]
        assert sum(e["count"] for e in entries) == sum(per_subject.values())
        for subject, n in per_subject.items():
            assert sum(e["count"] for e in entries if e["subject"] == subject) == n
        assert all(0 < e["count"] <= 7 for e in entries)
        assert index.count(split) == sum(per_subject.values())

    # 3 x 30 own stimuli + 10 shared test stimuli seen by all three subjects
    assert len(stimuli) == 100
    assert data["stimuli_encoded"] == {"low": 100, "high": 100}
    counts = collections.Counter(encoded)
    assert set(counts) == stimuli
    assert max(counts.values()) == 1, [sid for sid, n in counts.items() if n > 1][:5]
    assert data["label_names"] == list(plugin.world.label_names)
    assert data["token_shape"] == [3, 8] and data["subjects"] == ["sub-01", "sub-02", "sub-03"]
    assert data["guidance"]["low"]["dim"] == 16 and data["guidance"]["high"]["dim"] == 16
    assert find_shards(recipe)["synthetic"].data == data


# ----------------------------------------------------------------------------- reuse and resume


def _count_samples_calls(monkeypatch: pytest.MonkeyPatch, crash: dict | None = None) -> collections.Counter:
    """Count calls of SyntheticDataset.samples per subject; optionally interrupt one subject."""
    calls: collections.Counter = collections.Counter()
    original = SyntheticDataset.samples

    def samples(self, subject: str) -> Iterator[Sample]:
        calls[subject] += 1
        for n, s in enumerate(original(self, subject)):
            if crash and crash.get("subject") == subject and n == crash["after"]:
                raise KeyboardInterrupt  # a Ctrl-C (or a kill) in the middle of a subject
            yield s

    monkeypatch.setattr(SyntheticDataset, "samples", samples)
    return calls


def test_rerun_reuses_finished_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = make_recipe(tmp_path)
    first = build_shards(recipe, progress=False)["synthetic"]
    tars = {p: p.stat().st_mtime_ns for p in first.root.rglob("*.tar")}
    calls = _count_samples_calls(monkeypatch)
    second = build_shards(recipe, progress=False)["synthetic"]
    assert sum(calls.values()) == 0
    assert second.root == first.root and second.data == first.data
    assert {p: p.stat().st_mtime_ns for p in second.root.rglob("*.tar")} == tars


def test_interrupted_build_resumes_to_identical_tars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     small_write_buffer: int) -> None:
    clean = build_shards(make_recipe(tmp_path / "clean"), progress=False)["synthetic"]

    crash = {"subject": "sub-02", "after": 17}  # 17 samples read: 16 flushed, two tars of 7 closed, one open
    calls = _count_samples_calls(monkeypatch, crash)
    recipe = make_recipe(tmp_path / "resumed")
    directory = plan(recipe)[0].directory
    with pytest.raises(KeyboardInterrupt):
        build_shards(recipe, progress=False)
    assert tmp_leftovers(tmp_path / "resumed") == []
    assert not (directory / "index.json").exists()
    assert sorted(p.name for p in (directory / "_parts").iterdir()) == ["sub-01.json"]
    assert find_shards(recipe) is None

    # a SIGKILL leaves temp files behind: the rerun must clear them
    stale = directory / "train" / ".tmp-sub-02-0002.tar.99999"
    stale.write_bytes(b"half a tar")
    crash.clear()
    calls.clear()
    resumed = build_shards(recipe, progress=False)["synthetic"]
    assert calls == {"sub-02": 1, "sub-03": 1}  # sub-01 was finished and is not read again
    assert not stale.exists() and tmp_leftovers(tmp_path / "resumed") == []

    assert resumed.root.name == clean.root.name
    names = sorted(p.relative_to(clean.root) for p in clean.root.rglob("*.tar"))
    assert names == sorted(p.relative_to(resumed.root) for p in resumed.root.rglob("*.tar"))
    assert len(names) == 3 * (4 + 1 + 2)  # per subject: 27 train, 3 val, 10 test in tars of 7
    for rel in names:
        assert (resumed.root / rel).read_bytes() == (clean.root / rel).read_bytes(), rel
    assert resumed.data == clean.data


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("corrupt", "key", "what"), [
    ("nan", "bad-synthetic/sub-02/0000005", "1 NaN"),
    ("inf", "bad-synthetic/sub-02/0000005", "1 Inf"),
    ("label_width", "bad-synthetic/sub-02/0000005", "label vector has shape (13,)"),
    ("fmri_shape", "bad-synthetic/sub-02/0000005", "fMRI has shape (3, 7), expected (3, 8)"),
    ("duplicate_index", "bad-synthetic/sub-02/0000004", "duplicate sample index 4"),
    ("index_type", "bad-synthetic/sub-02/'5'", "non-negative integer"),
])
def test_bad_sample_is_named_and_nothing_half_written(tmp_path: Path, register_datasets, small_write_buffer: int,
                                                      corrupt: str, key: str, what: str) -> None:
    register_datasets(BadDataset)
    recipe = make_recipe(tmp_path, {**ROI, "corrupt": corrupt}, plugin="bad-synthetic")
    directory = plan(recipe)[0].directory
    with pytest.raises(DataError) as err:
        build_shards(recipe, progress=False)
    message = str(err.value)
    assert key in message and what in message, message
    assert tmp_leftovers(tmp_path) == []
    assert not (directory / "index.json").exists()
    assert sorted(p.name for p in (directory / "_parts").iterdir()) == ["sub-01.json"]
    assert not list((directory / "train").glob("sub-02-*.tar"))  # sample 5 < 7: no sub-02 tar was complete


def test_bad_volume_sample_and_mask_are_named(tmp_path: Path, register_datasets) -> None:
    register_datasets(BadDataset)
    recipe = make_recipe(tmp_path / "nan", {**VOLUME, "corrupt": "nan"}, plugin="bad-synthetic")
    with pytest.raises(DataError, match=re.escape("sample bad-synthetic/sub-02/0000005: fMRI has 1 NaN")):
        build_shards(recipe, progress=False)

    recipe = make_recipe(tmp_path / "mask", {**VOLUME, "corrupt": "mask_shape"}, plugin="bad-synthetic")
    with pytest.raises(DataError) as err:
        build_shards(recipe, progress=False)
    message = str(err.value)
    assert "'bad-synthetic'" in message and "'sub-02'" in message
    assert "mask has shape (6, 6, 6), expected grid (6, 7, 6)" in message
    directory = plan(recipe)[0].directory
    assert tmp_leftovers(tmp_path) == [] and not (directory / "index.json").exists()
    assert not (directory / "masks" / "sub-02.npy").exists()


def test_plugin_raising_is_named(tmp_path: Path, register_datasets) -> None:
    register_datasets(BadDataset)
    recipe = make_recipe(tmp_path, {**ROI, "corrupt": "raise"}, plugin="bad-synthetic")
    with pytest.raises(PluginError) as err:
        build_shards(recipe, progress=False)
    message = str(err.value)
    assert "'bad-synthetic'" in message and "'sub-02'" in message and "bad-synthetic/sub-02/0000004" in message
    assert "RuntimeError: the raw file is unreadable" in message
    assert isinstance(err.value.__cause__, RuntimeError)
    assert tmp_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- directory hash


def test_shard_directory_follows_the_options(tmp_path: Path) -> None:
    def directory(options=None, **kw) -> Path:
        return plan(make_recipe(tmp_path, options, **kw))[0].directory

    base = directory()
    assert base.parent == tmp_path and base.name.startswith("synthetic-")
    assert directory() == base
    assert directory({**ROI, "noise": 1.5}) == base  # spelling out a default changes nothing
    assert plan(make_recipe(tmp_path / "elsewhere"))[0].directory.name == base.name  # root is not hashed
    changed = {
        directory({**ROI, "token_dim": 9}),
        directory({**ROI, "world_seed": 1}),
        directory({**ROI, "subject_variability": 0.5}),
        directory(samples_per_shard=8),
        directory(name="other"),
    }
    assert base not in changed and len(changed) == 5


def test_index_records_the_recipe_hash(tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path)
    index = build_shards(recipe, progress=False)["synthetic"]
    build = plan(recipe)[0]
    assert index.root == build.directory
    assert build.directory.name == f"synthetic-{index.data['recipe_hash']}"
    assert json.loads((index.root / "index.json").read_text())["fingerprint"] == build.fingerprint
    assert read_index(index.root).data == index.data
    assert shards_module.FORMAT_VERSION == index.data["format"]


def test_feature_cache_keeps_provenance_and_refuses_mixed_weights(tmp_path: Path) -> None:
    """Features cached with one set of weights are labelled by what made them, and a plugin whose
    weights changed may not add to that cache."""
    from foundation.core.api import GuidanceFeatures, GuidancePlugin, Stimulus
    from foundation.data.features import FeatureCache
    from foundation.core.errors import PluginError

    class Fake(GuidancePlugin):
        name = "fake"
        weights = None

        def encode(self, stimuli):
            return GuidanceFeatures(low=np.ones((len(stimuli), 2)), high=np.ones((len(stimuli), 3)))

        def provenance(self):
            return {"random_weights": self.weights is None, "weights": self.weights}

    fetch = lambda ids: [Stimulus(id=i) for i in ids]  # noqa: E731
    plugin = Fake(None)
    cache = FeatureCache(tmp_path / "cache")
    cache.ensure(["a", "b"], plugin, fetch, batch_size=8)
    again = FeatureCache(tmp_path / "cache")
    assert again.provenance == {"random_weights": True, "weights": None}
    plugin.weights = "/models/real.bin"
    again.ensure(["a"], plugin, fetch, batch_size=8)  # nothing to encode: nothing mixed
    with pytest.raises(PluginError, match="random_weights"):
        again.ensure(["c"], plugin, fetch, batch_size=8)
    assert len(again) == 2
