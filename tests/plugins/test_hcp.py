"""The built-in ``hcp`` dataset plugin on generated trees in the exact HCP 7T movie layout.

The fixture (``hcp_fixture.py``) plants the right answers: a ramp voxel for the delay, 0/1 WordNet
categories with known training frequencies, three clip segments per run with the last one repeated.
Default fixture, crop ``1:,1:-1,:-1`` (9×10×8 → 8×8×7), the fixture's own segments file with ``split:
val_gap``, ``val_seconds: 6``, ``val_gap: 2``: per movie
1–3 the seconds 2..9 and 12..15 are train, 16..17 the val gap, 18..19 val, T-8..T-5 (repeated clip,
volume 4 s later still in the run) train; movie 4 has 2..9 and 12..19 as test.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import json
import logging
import sys
import tarfile
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

if importlib.util.find_spec("foundation_hcp") is None:  # not yet in the editable install's package map
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from foundation_hcp import HCPMovieDataset, HCPOptions, volumes
from foundation_hcp import segments as seg_mod

from foundation.core import plugins
from foundation.core.api import GuidanceFeatures, GuidancePlugin
from foundation.core.config import Recipe
from foundation.core.errors import DataError, RecipeError
from foundation.core.hookspecs import hookimpl
from foundation.core.recipe import from_dict
from tests.plugins.hcp_fixture import AFFINE, CONSTANT, MARKER, ZERO, brain_mask, write_hcp_fixture

CROP = "1:,1:-1,:-1"
CROP_SLICES = (slice(1, None), slice(1, -1), slice(None, -1))
OPTIONS = {"segments": "clip_segments.json", "split": "val_gap", "crop": CROP, "val_seconds": 6, "val_gap": 2}
TRAIN_SECONDS = [*range(2, 10), 12, 13, 14, 15]  # + the repeated clip's T-8..T-5
VAL_SECONDS = [18, 19]
TEST_SECONDS = [*range(2, 10), *range(12, 20)]


def expected_seconds(movie: int, n_t: int) -> dict[int, str]:
    if movie == 4:
        return {s: "test" for s in TEST_SECONDS}
    out = {s: "train" for s in [*TRAIN_SECONDS, *range(n_t - 8, n_t - 4)]}
    out.update({s: "val" for s in VAL_SECONDS})
    return out


def make(root: Path, **options) -> HCPMovieDataset:
    opts = from_dict(HCPOptions, {**OPTIONS, **options})
    return HCPMovieDataset(opts, root=root, seed=0)


# ----------------------------------------------------------------------------- a text guidance plugin


class TextGuidance(GuidancePlugin):
    """Deterministic features from ``Stimulus.text``; remembers every id it encoded."""

    name = "hcp-test-text"
    needs = ("text",)
    batch_size = 16
    encoded: ClassVar[list[str]] = []
    texts: ClassVar[dict[str, str]] = {}

    def encode(self, stimuli):
        out = []
        for s in stimuli:
            assert s.text is not None and s.image is None
            type(self).encoded.append(s.id)
            type(self).texts[s.id] = s.text
            digest = hashlib.sha256(s.text.encode()).digest()
            out.append(np.frombuffer(digest[:24], dtype=np.uint8).astype(np.float32) / 255)
        feats = np.stack(out)
        return GuidanceFeatures(low=feats[:, :16], high=feats[:, 16:])


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh plugin manager with the hcp plugin (entry point or explicit) and the text guidance."""
    monkeypatch.setattr(plugins, "_manager", None)
    module = types.ModuleType("hcp_test_guidance")

    def foundation_guidance_plugins():
        return [TextGuidance]

    module.foundation_guidance_plugins = hookimpl(foundation_guidance_plugins)
    monkeypatch.setitem(sys.modules, "hcp_test_guidance", module)
    plugins.register_module("foundation_hcp.plugin")  # a no-op once the entry point registers it
    plugins.register_module("hcp_test_guidance")
    TextGuidance.encoded, TextGuidance.texts = [], {}


def recipe_for(tmp_path: Path, root: Path, **options) -> Recipe:
    return from_dict(Recipe, {
        "name": "hcp-tiny", "seed": 0,
        "datasets": [{"plugin": "hcp", "name": "hcp", "root": str(root), "options": {**OPTIONS, **options}}],
        "guidance": {"low": "hcp-test-text", "high": "hcp-test-text"},
        "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 32},
        "model": {"dim": 16, "depth": 1, "heads": 2, "head_hidden": 16, "volume_channels": [4, 8]},
        "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "checkpoint_every": 4, "log_every": 2,
                  "warmup_steps": 1, "shuffle_buffer": 16, "eval_batch_size": 32},
        "run": {"dir": str(tmp_path / "run")},
    })


def read_tars(directory: Path, index: dict) -> dict[str, dict]:
    """Every sample in the shard tars, by key: meta json, fmri, labels."""
    out: dict[str, dict] = collections.defaultdict(dict)
    for entries in index["shards"].values():
        for entry in entries:
            with tarfile.open(directory / entry["path"]) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.partition(".")
                    payload = tar.extractfile(member).read()
                    if ext == "json":
                        out[key]["meta"] = json.loads(payload)
                    elif ext in ("fmri.npy", "labels.npy"):
                        out[key][ext.split(".")[0]] = np.load(io.BytesIO(payload))
    return dict(out)


# ----------------------------------------------------------------------------- through the framework


def test_shards_counts_values_labels_and_training(tmp_path: Path, registered: None) -> None:
    from foundation.data.shards import build_shards
    from foundation.workflows.train import train

    fx = write_hcp_fixture(tmp_path / "HCP")
    recipe = recipe_for(tmp_path, fx.root)
    build_shards(recipe, progress=False)
    directory = next((tmp_path / "shards").glob("hcp-*"))
    index = json.loads((directory / "index.json").read_text())

    # counts per subject and split = the in-segment seconds whose volume exists
    per_movie = [expected_seconds(m, t) for m, t in zip((1, 2, 3, 4), fx.seconds)]
    want = collections.Counter(sp for e in per_movie for sp in e.values())
    assert want == {"train": 48, "val": 6, "test": 16}
    for split in ("train", "val", "test"):
        assert index["counts"][split] == {s: want[split] for s in fx.subjects}
    # every stimulus encoded once although both subjects saw it
    assert index["stimuli_encoded"] == {"low": 70, "high": 70}
    assert sorted(TextGuidance.encoded) == sorted(set(TextGuidance.encoded)) and len(TextGuidance.encoded) == 70
    assert TextGuidance.texts["hcp-m1-s0002"] == "plant, building, dog"  # categories 0, 2, 4 at an even second
    assert TextGuidance.texts["hcp-m4-s0003"] == "person, car, tree, water"  # + the movie-4-only category

    # each subject's affine, moved to the crop's voxel 0 (1, 1, 0): what predict compares a NIfTI with
    shifted = AFFINE @ np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    for s in fx.subjects:
        np.testing.assert_allclose(index["affines"][s], shifted)
    # grid, labels, provenance
    assert index["grid"] == [8, 8, 7] and index["kind"] == "volume"
    assert index["label_names"] == list(fx.synsets[:6])
    assert index["extra"]["stimuli"].startswith("text-only")
    assert index["extra"]["wordnet_categories"] == 12
    assert (directory / "hcp_segments.json").is_file() and (directory / "hcp_labels.json").is_file()

    # every sample: split, stimulus, delay, crop, mask order and min-max normalisation
    samples = read_tars(directory, index)
    assert len(samples) == 2 * 70
    for i, subject in enumerate(fx.subjects):
        mask = np.load(directory / index["masks"][subject])
        expected_mask = brain_mask(fx.grid)[CROP_SLICES]  # ZERO excluded, CONSTANT kept
        np.testing.assert_array_equal(mask, expected_mask)
        marker = np.flatnonzero(mask).tolist().index(np.ravel_multi_index(
            tuple(c - s.start if s.start else c for c, s in zip(MARKER, CROP_SLICES)), mask.shape))
        rows = {}
        for m in (1, 2, 3, 4):
            raw = fx.volume(subject, m)[CROP_SLICES][mask]  # (V, T)
            lo, hi = raw.min(1, keepdims=True), raw.max(1, keepdims=True)
            norm = np.divide(raw - lo, hi - lo, out=np.zeros_like(raw), where=hi > lo)
            rows[m] = norm
        seen = collections.defaultdict(dict)
        for sample in samples.values():
            meta = sample["meta"]
            if meta["subject"] != subject:
                continue
            m, s = int(meta["stimulus"][5]), int(meta["stimulus"][8:])
            seen[m][s] = meta["split"]
            fmri = sample["fmri"]
            assert fmri.dtype == np.float16 and fmri.shape == (mask.sum(),)
            np.testing.assert_allclose(fmri, rows[m][:, s + 4], atol=1e-3)  # the volume 4 s later
            assert abs(float(fmri[marker]) - (s + 4) / (fx.seconds[m - 1] - 1)) < 1e-3
            np.testing.assert_array_equal(sample["labels"], fx.wordnet[m][s, :6].astype(np.uint8))
        for m, t in zip((1, 2, 3, 4), fx.seconds):
            assert seen[m] == expected_seconds(m, t)
        # the repeated last clip of movie 4 is not there; movie 1's is, in train
        assert not any(s >= fx.seconds[3] - 8 for s in seen[4])
        assert seen[1][fx.seconds[0] - 8] == "train"

    # and the spine trains on it
    metrics = Path(train(recipe, progress=False))
    assert metrics.is_file()
    assert set(json.loads(metrics.read_text())["test"]["per_subject"]) == {f"hcp/{s}" for s in fx.subjects}


# ----------------------------------------------------------------------------- options and rules


def test_frames_to_seconds_rule() -> None:
    assert seg_mod.segment_seconds(48, 240).tolist() == list(range(2, 10))
    assert seg_mod.segment_seconds(300, 480).tolist() == list(range(12, 20))  # 12.5 s .. 20 s: floor, end excl.
    assert seg_mod.segment_seconds(0, 1).tolist() == [0]
    assert seg_mod.segment_seconds(24031, 26023).tolist() == list(range(1001, 1084))  # exactly 83 s
    for a, b in [(0, 24), (5, 100), (1000, 5003), (239, 241)]:
        assert seg_mod.segment_seconds(a, b).tolist() == np.arange(a / 24, b / 24).astype(int).tolist()


def test_split_plan_rules(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    seg = seg_mod.load_segments(fx.segments_json, trusted=False)
    plan = seg_mod.plan_seconds(seg, val_seconds=6, val_gap=2)
    assert dict(plan.seconds[1]) == {**{s: "train" for s in [*TRAIN_SECONDS, *range(32, 39)]},
                                     **{s: "val" for s in VAL_SECONDS}}  # before the delay drops 36..38
    assert dict(plan.seconds[4]) == {s: "test" for s in TEST_SECONDS}
    assert plan.dropped == {"repeated_clip": 7, "val_gap": 6, "duplicate_second": 0}
    dropped = seg_mod.plan_seconds(seg, val_seconds=7, val_gap=0, repeated_clip="drop")
    assert [len(dropped.of_split("val")[m]) for m in (1, 2, 3)] == [3, 2, 2]  # the first movie takes the remainder
    assert not any(s >= 28 for m in (1, 2, 3) for s, _ in dropped.seconds[m])
    assert seg_mod.plan_seconds(seg, val_seconds=0, val_gap=5).counts()["val"] == 0
    with pytest.raises(DataError, match="fewer than its share of val_seconds"):
        seg_mod.plan_seconds(seg, val_seconds=60, val_gap=0)


def test_label_threshold_counts_training_seconds_only(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    info = make(fx.root).info()
    assert info.label_names == fx.synsets[:6]  # the movie-4-only category (frequency 0) and the rare one dropped
    assert info.extra["label_frequency"] == {n: 0.5 for n in fx.synsets[:6]}
    rare = make(fx.root, label_threshold=0.05).info()  # category 7: 3 of 48 training seconds = 0.0625
    assert rare.label_names == (*fx.synsets[:6], fx.synsets[7])


def test_crop_disabled_and_options_validated(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    assert make(fx.root, crop=None).info().grid == fx.grid
    assert make(fx.root).info().grid == (8, 8, 7)
    with pytest.raises(RecipeError, match="crop"):
        from_dict(HCPOptions, {"crop": "2:,4:-5"})
    with pytest.raises(RecipeError, match="not both"):
        from_dict(HCPOptions, {"segments": "a.json", "trust_pickle_segments": "b.npy"})
    with pytest.raises(RecipeError, match="normalize"):
        from_dict(HCPOptions, {"normalize": "percent"})


def test_chunked_reading_equals_whole_run_and_zscore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    ds = make(fx.root, normalize="zscore")
    whole = [s.fmri for s in ds.samples("100610")]
    monkeypatch.setattr(volumes, "CHUNK_BYTES", 1)  # one volume per chunk
    chunked = [s.fmri for s in make(fx.root, normalize="zscore").samples("100610")]
    np.testing.assert_array_equal(np.stack(whole), np.stack(chunked))
    x = np.stack(whole).astype(np.float32)
    assert np.isfinite(x).all() and x.min() < -1 and x.max() > 1  # z-scores, not [0, 1]


def test_mask_rules(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    brain = brain_mask(fx.grid)[CROP_SLICES]
    cropped = tuple(c - (s.start or 0) for c, s in zip(CONSTANT, CROP_SLICES))
    assert make(fx.root).mask("100610")[cropped]  # non-zero: kept, normalised to 0
    nonconstant = make(fx.root, mask="nonconstant").mask("100610")
    assert not nonconstant[cropped] and nonconstant.sum() == brain.sum() - 1
    # a user mask on the raw grid is cropped like the data
    from tests.plugins.hcp_fixture import write_nifti

    user = np.zeros(fx.grid, dtype=np.float32)
    user[3:6, 3:7, 2:6] = 1
    user[ZERO] = 1
    write_nifti(tmp_path / "mask.nii.gz", user)
    got = make(fx.root, mask_file="mask.nii.gz").mask("100610")
    np.testing.assert_array_equal(got, user[CROP_SLICES] != 0)


def test_frames_folder_gives_images(tmp_path: Path) -> None:
    from PIL import Image

    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    for m, code in [(1, "MOVIE1_CC1"), (2, "MOVIE2_HO1"), (3, "MOVIE3_CC2"), (4, "MOVIE4_HO2")]:
        folder = tmp_path / "movies" / f"7T_{code}_v2"
        folder.mkdir(parents=True)
        for s in range(fx.seconds[m - 1]):
            Image.fromarray(np.full((6, 8, 3), (m * 50 + s) % 256, np.uint8)).save(folder / f"{s:04d}.png")
    ds = make(fx.root, movie_frames=str(tmp_path / "movies"))
    assert ds.info().extra["stimuli"].startswith("frames + text")
    stims = list(ds.stimuli(["hcp-m2-s0007", "hcp-m1-s0003"]))
    assert [s.id for s in stims] == ["hcp-m2-s0007", "hcp-m1-s0003"]
    assert stims[0].image.shape == (6, 8, 3) and int(stims[0].image[0, 0, 0]) == 107
    assert int(stims[1].image[0, 0, 0]) == 53 and stims[1].text


def write_movie(path: Path, av, *, seconds: int, fps: int = 24) -> None:
    """A tiny generated video: every frame of second ``s`` has brightness ``20·s`` (mod 256)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for i in range(fps * seconds):
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), (i // fps) * 20 % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_movie_files_decoded_one_frame_per_second_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    av = pytest.importorskip("av", reason="decoding movie files needs PyAV: pip install 'foundation[movies]'")
    from foundation_hcp import frames as frames_mod

    fx = write_hcp_fixture(tmp_path, subjects=("100610",), seconds=(12, 12, 12, 12),
                           segments={str(m): [[48, 120], [168, 216]] for m in (1, 2, 3, 4)})
    movies = tmp_path / "movies"
    movies.mkdir()
    for code in ("MOVIE1_CC1", "MOVIE2_HO1", "MOVIE3_CC2", "MOVIE4_HO2"):
        write_movie(movies / f"7T_{code}_v2.mp4", av, seconds=12)
    cache = tmp_path / "cache"
    ds = make(fx.root, movie_frames="movies", frames_cache=str(cache), val_seconds=1, val_gap=0)
    stims = list(ds.stimuli(["hcp-m3-s0007", "hcp-m3-s0002"]))
    assert [round(float(s.image.mean()) / 20) for s in stims] == [7, 2] and stims[0].image.shape == (16, 32, 3)
    # the first read decoded every sample second of movie 3 (2, 3, 4 and 7, 8) in one pass and kept them
    folder = ds._state().frames.cache_dir(3)
    assert folder.parent == cache and sorted(p.name for p in folder.iterdir()) == [
        "0002.png", "0003.png", "0004.png", "0007.png", "0008.png"]
    # a later read (a new plugin instance: a later shard build) decodes nothing
    monkeypatch.setattr(frames_mod, "decode_seconds", lambda *a, **k: pytest.fail("decoded again"))
    again = make(fx.root, movie_frames="movies", frames_cache=str(cache), val_seconds=1, val_gap=0)
    assert round(float(next(again.stimuli(["hcp-m3-s0008"])).image.mean()) / 20) == 8
    # a second past the end of the movie file is a clear error
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"ends at .* before second 30"):
        list(frames_mod.decode_seconds(movies / "7T_MOVIE1_CC1_v2.mp4", [3, 30]))


def test_movie_file_without_pyav_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foundation_hcp import frames as frames_mod

    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    (tmp_path / "movies").mkdir()
    for code in ("MOVIE1_CC1", "MOVIE2_HO1", "MOVIE3_CC2", "MOVIE4_HO2"):
        (tmp_path / "movies" / f"7T_{code}_v2.mp4").write_bytes(b"not decoded")
    monkeypatch.setattr(frames_mod, "_have_av", lambda: False)
    with pytest.raises(DataError, match=r"needs PyAV.*foundation\[movies\]"):
        make(fx.root, movie_frames="movies").info()


# ----------------------------------------------------------------------------- segments and pickles


def test_pickle_refused_unless_trusted_and_converter(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",), write_pickle=True)
    with pytest.raises(DataError, match="trust_pickle_segments"):
        make(fx.root, segments="clip_times_24.npy").info()
    trusted = make(fx.root, segments=None, trust_pickle_segments="clip_times_24.npy")
    reference = make(fx.root)
    assert trusted.info().extra["segment_seconds_per_split"] == reference.info().extra["segment_seconds_per_split"]
    assert "trusted pickle" in trusted.info().extra["segments"]
    # the one-line converter, then the JSON is read without trust
    out = tmp_path / "converted.json"
    assert seg_mod.main(["convert", str(fx.pickle), str(out)]) == 0
    converted = seg_mod.load_segments(out, trusted=False)
    assert {m: v.tolist() for m, v in converted.frames.items()} == {int(k): v for k, v in fx.segments.items()}
    # an unreadable pickle, even trusted, is a clear error
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY" + b"\x00" * 40)
    with pytest.raises(DataError, match="could not be read"):
        make(fx.root, segments=None, trust_pickle_segments=str(bad)).info()


def test_segments_csv_and_missing_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    rows = ["movie,start,end"] + [f"{m},{a},{b}" for m, segs in fx.segments.items() for a, b in segs]
    (tmp_path / "segments.csv").write_text("\n".join(rows))
    assert make(fx.root, segments="segments.csv").info().label_names == make(fx.root).info().label_names
    monkeypatch.setattr(seg_mod, "PACKAGED", tmp_path / "absent.json")
    with pytest.raises(DataError, match=r"packaged Khosla .* missing from this installation"):
        make(fx.root, segments=None).info()
    (tmp_path / "seg.json").write_text(json.dumps({"1": [[0, 10]], "2": [[0, 10]], "3": [[0, 10]]}))
    with pytest.raises(DataError, match=r"movie\(s\) \[4\]"):
        make(fx.root, segments="seg.json").info()


# ----------------------------------------------------------------------------- bad input


def test_missing_wordnet_and_bad_root(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    (fx.root / "7T_movie_resources" / "WordNetFeatures.hdf5").unlink()
    with pytest.raises(DataError, match=r"WordNet labels file .*WordNetFeatures\.hdf5 not found"):
        make(fx.root).info()
    with pytest.raises(DataError, match="datasets\\[\\].root"):
        HCPMovieDataset(HCPOptions(), root=None).info()


def test_nan_in_a_run_names_file_and_run(tmp_path: Path) -> None:
    from tests.plugins.hcp_fixture import write_nifti

    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    data = fx.volume("100610", 2)
    data[MARKER][7] = np.nan
    write_nifti(fx.run("100610", 2), data)
    ds = make(fx.root)
    with pytest.raises(DataError, match=r"subject 100610 run tfMRI_MOVIE2_7T_PA: .*MOVIE2_7T_PA_hp2000_clean\.nii\.gz "
                                        r"has 1 NaN.*volume 7"):
        list(ds.samples("100610"))


def test_grid_mismatch_names_both_files(tmp_path: Path) -> None:
    from tests.plugins.hcp_fixture import write_nifti

    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    write_nifti(fx.run("100610", 3), np.ones((9, 10, 7, 36), np.float32))
    with pytest.raises(DataError) as err:
        make(fx.root).info()
    assert "tfMRI_MOVIE3_7T_PA_hp2000_clean.nii.gz" in str(err.value)
    assert "tfMRI_MOVIE1_7T_AP_hp2000_clean.nii.gz" in str(err.value)


def test_missing_run_skips_discovered_subject_errors_for_named(tmp_path: Path, caplog) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610", "102311", "102816"))
    fx.run("102311", 4).unlink()
    with caplog.at_level(logging.WARNING, logger="foundation_hcp"):
        info = make(fx.root, n_subjects=2).info()
    assert info.subjects == ("100610", "102816")
    assert "102311" in info.extra["skipped_subjects"]
    assert any("skipping subject 102311" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=r"subject '102311' \(named in `subjects`\) is missing .*MOVIE4_7T_AP"):
        make(fx.root, subjects=[100610, "102311"]).info()  # an unquoted YAML id is an int
