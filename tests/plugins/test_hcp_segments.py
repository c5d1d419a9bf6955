"""The ``hcp`` plugin's clip segments and splits: the shipped Khosla et al. (2020) segments and lists,
segments derived from WordNet, a user's file, and the text of a second without a WordNet category.

Trees are written by ``hcp_fixture.py`` in the real download layout; the expected Khosla numbers are
read here straight from the shipped JSON (not through the plugin's reader).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("foundation_hcp") is None:  # not yet in the editable install's package map
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from foundation_hcp import HCPMovieDataset, HCPOptions
from foundation_hcp import segments as seg_mod

from foundation.core.errors import DataError
from foundation.core.convert import from_dict
from tests.plugins.hcp_fixture import MARKER, RUNS, write_hcp_fixture, write_wordnet

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "plugins" / "foundation_hcp" / "khosla2020.json"
#: volumes per run of the real HCP 7T movie runs (DATA_LAYOUTS.md)
REAL_LENGTHS = (921, 918, 915, 901)


def make(root: Path, **options) -> HCPMovieDataset:
    return HCPMovieDataset(from_dict(HCPOptions, options), root=root, seed=0)


def test_shipped_file_has_citation_and_is_package_data() -> None:
    data = json.loads(SHIPPED.read_text())
    assert "Khosla" in data["citation"] and "MICCAI" in data["citation"]
    assert "clip_times_24" in data["sources"]["segments"]
    assert len(data["split"]["train"]) == 2000 and len(data["split"]["val"]) == 265
    assert seg_mod.PACKAGED == SHIPPED
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\nfoundation_hcp = ["khosla2020.json"]' in pyproject


def test_khosla2020_default_gives_the_papers_2000_265_699_at_real_lengths(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",), grid=(7, 7, 6), seconds=REAL_LENGTHS)
    ds = make(fx.root, crop=None)  # segments: khosla2020, split: khosla2020 are the defaults
    info = ds.info()
    assert info.extra["segments"].startswith("khosla2020")
    assert info.extra["segment_seconds_per_split"] == {"train": 2000, "val": 265, "test": 699}
    counts = {"train": 0, "val": 0, "test": 0}
    val, marker = set(), np.ravel_multi_index(MARKER, fx.grid)
    index = np.flatnonzero(ds.mask("100610").reshape(-1)).tolist().index(marker)
    for sample in ds.samples("100610"):
        counts[sample.split] += 1
        movie, second = int(sample.stimulus[5]), int(sample.stimulus[8:])
        if sample.split == "val":
            val.add((movie, second))
        # the volume 4 s after the second (the marker voxel ramps 0..1 over the run)
        assert abs(float(sample.fmri[index]) - (second + 4) / (REAL_LENGTHS[movie - 1] - 1)) < 1e-3
    assert counts == {"train": 2000, "val": 265, "test": 699}  # every planned second has its volume
    published = json.loads(SHIPPED.read_text())["split"]["val"]
    assert val == {(m, f // 24) for m, f in published}


def test_val_gap_rule_is_kept_as_an_option(tmp_path: Path) -> None:
    seg = seg_mod.load_packaged()
    lists = seg_mod.load_split_lists()
    khosla = seg_mod.plan_khosla(seg, lists)
    no_gap = seg_mod.plan_seconds(seg, val_seconds=265, val_gap=0)
    gap = seg_mod.plan_seconds(seg, val_seconds=265, val_gap=10)
    # same counts without a gap, but other validation seconds; the gap costs 10 training seconds per movie
    assert no_gap.counts() == khosla.counts() == {"train": 2000, "val": 265, "test": 699}
    assert no_gap.of_split("val")[1].tolist() != khosla.of_split("val")[1].tolist()
    assert gap.counts() == {"train": 1970, "val": 265, "test": 699} and gap.dropped["val_gap"] == 30
    # the test movie is the same under both rules
    assert khosla.of_split("test")[4].tolist() == gap.of_split("test")[4].tolist()
    # repeated_clip: drop removes the test-retest clip of movies 1-3 from the published lists
    dropped = seg_mod.plan_khosla(seg, lists, repeated_clip="drop")
    last = {m: set(seg.clip_seconds(m, len(seg.frames[m]) - 1).tolist()) for m in (1, 2, 3)}
    assert not any(s in last[m] for m in (1, 2, 3) for s, _ in dropped.seconds[m])
    assert sum(dropped.counts().values()) == 2964 - sum(len(v) for v in last.values())


def test_khosla_split_needs_the_khosla_segments(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    with pytest.raises(DataError, match=r"split: khosla2020 .* differ in movie 1.*split: val_gap"):
        make(fx.root, segments="clip_segments.json").info()


def rest_zeroed(fx) -> dict[int, np.ndarray]:
    """The fixture's WordNet with every second outside its clip segments emptied (as HCP's rest seconds)."""
    out = {}
    for m, t in zip(RUNS, fx.seconds):
        keep = np.zeros(t, bool)
        for a, b in fx.segments[str(m)]:
            keep[seg_mod.segment_seconds(a, b)] = True
        out[m] = fx.wordnet[m] * keep[:, None]
    return out


def test_wordnet_segments_are_the_runs_of_labelled_seconds(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",),
                           segments={str(m): [[48, 240], [288, 480], [24 * (t - 8), 24 * (t - 1)]]
                                     for m, t in zip(RUNS, (40, 38, 36, 34))})
    write_wordnet(fx.root / "7T_movie_resources" / "WordNetFeatures.hdf5", rest_zeroed(fx), fx.synsets)
    opts = {"crop": "1:,1:-1,:-1", "split": "val_gap", "val_seconds": 6, "val_gap": 2}
    derived, given = make(fx.root, segments="wordnet", **opts), make(fx.root, segments="clip_segments.json", **opts)
    assert derived._state().segments.frames.keys() == given._state().segments.frames.keys()
    for m in (1, 2, 3, 4):
        np.testing.assert_array_equal(derived._state().segments.frames[m], given._state().segments.frames[m])
    assert derived._state().plan == given._state().plan
    assert derived.info().extra["segments"].startswith("wordnet: runs of labelled seconds in")
    # one run only: there is no repeated clip to tell apart
    one = {m: np.ones_like(v) for m, v in fx.wordnet.items()}
    write_wordnet(fx.root / "7T_movie_resources" / "WordNetFeatures.hdf5", one, fx.synsets)
    with pytest.raises(DataError, match=r"movie 1 has 1 run\(s\) of labelled seconds"):
        make(fx.root, segments="wordnet", **opts).info()


def test_second_without_wordnet_category_gets_the_defined_text(tmp_path: Path) -> None:
    fx = write_hcp_fixture(tmp_path, subjects=("100610",))
    labels = dict(fx.wordnet)
    labels[1] = labels[1].copy()
    labels[1][3] = 0  # second 3 of movie 1 (a training second) has no category
    write_wordnet(fx.root / "7T_movie_resources" / "WordNetFeatures.hdf5", labels, fx.synsets)
    opts = {"segments": "clip_segments.json", "split": "val_gap", "val_seconds": 6, "val_gap": 2}
    ds = make(fx.root, **opts)
    texts = {s.id: s.text for s in ds.stimuli(["hcp-m1-s0003", "hcp-m1-s0002"])}
    assert texts == {"hcp-m1-s0003": "a movie scene", "hcp-m1-s0002": "plant, building, dog"}
    assert ds.info().extra["empty_text"]["text"] == "a movie scene"
    assert ds.info().extra["empty_text"]["seconds"] == 1
    custom = make(fx.root, empty_text="a scene without annotated objects", **opts)
    assert next(custom.stimuli(["hcp-m1-s0003"])).text == "a scene without annotated objects"
    with pytest.raises(Exception, match="empty_text"):
        from_dict(HCPOptions, {"empty_text": "  "})


def test_segments_command_reports_errors_like_every_entry_point(tmp_path: Path, capsys) -> None:
    """``python -m foundation_hcp.segments`` prints ``error: …`` and exits 2 (a data error), as ``foundation``
    does, and shows the traceback only when asked (``--traceback``)."""
    bad = tmp_path / "segments.json"
    bad.write_text("{not json")
    assert seg_mod.main(["show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    assert seg_mod.main(["--traceback", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith("error: ")
