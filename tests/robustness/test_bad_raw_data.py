"""Bad raw data met by `foundation shard`: bad samples from a plugin, broken NSD and HCP files.

Every case goes through :func:`~foundation.data.shards.build_shards`; the error must name the sample key
or the file (and subject), and the build must leave nothing half-written: no temporary file, no
``index.json`` for the failed dataset, no tar of the subject being read.  The lenient mode
``shards.on_bad_sample: skip`` is tested at the end.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from foundation_synthetic.plugin import SyntheticDataset

from foundation.core.api import Sample
from foundation.core.config import Recipe
from foundation.core.errors import DataError, PluginError
from foundation.core.recipe import from_dict
from tests.data.conftest import ROI, BadDataset, BadOptions, _corrupt, make_recipe

from .conftest import HashGuidance, assert_nothing_half_written, expect


@pytest.fixture(autouse=True)
def small_write_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flush every 4 samples, so tars are open (half-written) when the bad sample arrives."""
    from foundation.data import shards

    monkeypatch.setattr(shards, "_WRITE_BUFFER", 4)


# --------------------------------------------------------------------------- bad samples from a plugin


@dataclasses.dataclass(frozen=True)
class WorseOptions(BadOptions):
    """BadOptions plus defects of the fMRI dtype: ``complex`` and ``text``."""


class WorseDataset(BadDataset):
    """:class:`BadDataset` that can also yield fMRI of a complex or a text dtype."""

    name = "worse-synthetic"
    Options = WorseOptions

    def samples(self, subject: str) -> Iterator[Sample]:
        o = self.options
        for s in SyntheticDataset.samples(self, subject):
            if subject == o.subject and s.index == o.at:
                if o.corrupt == "complex":
                    s = dataclasses.replace(s, fmri=np.asarray(s.fmri).astype(np.complex64))
                elif o.corrupt == "text":
                    s = dataclasses.replace(s, fmri=np.asarray(s.fmri).astype(str))
                else:
                    s = _corrupt(s, o.corrupt)
            yield s


def _build_bad(tmp_path: Path, corrupt: str, **shards: object):
    from foundation.data.shards import build_shards, plan

    recipe = make_recipe(tmp_path / "shards", {**ROI, "corrupt": corrupt}, plugin="worse-synthetic")
    for key, value in shards.items():
        setattr(recipe.shards, key, value)
    return plan(recipe)[0].directory, lambda: build_shards(recipe, progress=False)


def _assert_subject_not_written(directory: Path, subject: str = "sub-02") -> None:
    assert not (directory / "index.json").exists()
    assert not (directory / "_parts" / f"{subject}.json").exists()
    assert not list(directory.rglob(f"{subject}-*.tar"))


KEY = "worse-synthetic/sub-02/0000005"


@pytest.mark.parametrize(("case", "corrupt", "culprits"), [
    ("NaN voxels", "nan", (KEY, "fMRI has 1 NaN and 0 Inf")),
    ("Inf voxels", "inf", (KEY, "fMRI has 0 NaN and 1 Inf")),
    ("wrong fMRI shape", "fmri_shape", (KEY, "fMRI has shape (3, 7), expected (3, 8)")),
    ("wrong fMRI dtype (complex)", "complex", (KEY, "dtype complex64 is not a real number type")),
    ("wrong fMRI dtype (text)", "text", (KEY, "dtype <U")),
    ("label vector of the wrong width", "label_width", (KEY, "label vector has shape (13,), expected (12,)")),
    ("duplicate sample index", "duplicate_index", ("worse-synthetic/sub-02/0000004", "duplicate sample index 4")),
])
def test_bad_sample(tmp_path, fresh_plugins, request, case, corrupt, culprits):
    fresh_plugins(WorseDataset)
    directory, build = _build_bad(tmp_path, corrupt)
    expect(case, DataError, build, *culprits, request=request)
    _assert_subject_not_written(directory)
    assert (directory / "_parts" / "sub-01.json").is_file()  # the subject before it is complete and kept
    assert_nothing_half_written(tmp_path)


def test_plugin_raising_while_reading(tmp_path, fresh_plugins, request):
    fresh_plugins(WorseDataset)
    directory, build = _build_bad(tmp_path, "raise")
    err = expect("a plugin that raises while reading", PluginError, build, "'worse-synthetic'", "'sub-02'",
                 "after sample worse-synthetic/sub-02/0000004", "RuntimeError: the raw file is unreadable",
                 request=request)
    assert isinstance(err.__cause__, RuntimeError)
    _assert_subject_not_written(directory)
    assert_nothing_half_written(tmp_path)


# --------------------------------------------------------------------------- lenient mode


def test_lenient_mode_skips_counts_and_names_bad_samples(tmp_path, fresh_plugins, caplog):
    from foundation.data.loader import DatasetStream

    fresh_plugins(WorseDataset)
    strict_dir, _ = _build_bad(tmp_path, "nan")
    directory, build = _build_bad(tmp_path, "nan", on_bad_sample="skip")
    assert directory != strict_dir  # lenient shards never pass for strict ones
    index = build()["worse-synthetic"]
    skipped = index.data["skipped"]
    assert index.data["on_bad_sample"] == "skip"
    assert skipped["count"] == 1 and skipped["per_subject"] == {"sub-01": 0, "sub-02": 1, "sub-03": 0}
    assert skipped["samples"][0]["key"] == KEY and "1 NaN" in skipped["samples"][0]["reason"]
    assert any(KEY in r.getMessage() for r in caplog.records)
    assert sum(index.data["counts"]["train"].values()) + sum(index.data["counts"]["val"].values()) == 3 * 30 - 1
    stream = DatasetStream(index)
    keys = [k for split in ("train", "val", "test") for b in stream.eval_batches(split, 16) for k in b.keys]
    assert KEY not in keys and len(keys) == len(set(keys)) == 3 * 40 - 1
    assert_nothing_half_written(tmp_path)


def test_lenient_mode_still_refuses_a_subject_with_no_good_sample(tmp_path, fresh_plugins, request):
    class AllBad(SyntheticDataset):
        name = "all-bad"

        def samples(self, subject):
            for s in super().samples(subject):
                yield _corrupt(s, "nan") if subject == "sub-02" else s

    fresh_plugins(AllBad)
    from foundation.data.shards import build_shards, plan

    recipe = make_recipe(tmp_path / "shards", ROI, plugin="all-bad")
    recipe.shards.on_bad_sample = "skip"
    directory = plan(recipe)[0].directory
    expect("lenient mode, every sample of a subject bad", DataError, lambda: build_shards(recipe, progress=False),
           "'all-bad'", "'sub-02'", "all 40 samples are bad", request=request)
    _assert_subject_not_written(directory)
    assert_nothing_half_written(tmp_path)


def test_strict_is_the_default():
    assert Recipe().shards.on_bad_sample == "error"


# --------------------------------------------------------------------------- NSD files


@pytest.fixture(scope="module")
def nsd_tree(tmp_path_factory: pytest.TempPathFactory):
    """A pristine tiny NSD download (NIfTI and HDF5 betas); tests damage copies."""
    from tests.plugins.nsd_fixture import write_nsd_fixture

    return write_nsd_fixture(tmp_path_factory.mktemp("nsd") / "NSD", betas_format="both")


@pytest.fixture
def nsd(nsd_tree, tmp_path, fresh_plugins):
    """``(copy of the NSD tree, build(**options))``: damage the copy, then shard it."""
    from foundation.data.shards import build_shards

    fresh_plugins(HashGuidance)
    root = tmp_path / "NSD"
    shutil.copytree(nsd_tree.root, root)
    fx = dataclasses.replace(nsd_tree, root=root)

    def build(**options):
        recipe = from_dict(Recipe, {
            "seed": 0,
            "datasets": [{"plugin": "nsd", "name": "nsd", "root": str(root), "options": {"val_samples": 3, **options}}],
            "guidance": {"low": "robustness-hash", "high": "robustness-hash"},
            "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 8},
        })
        return lambda: build_shards(recipe, progress=False)

    return fx, build


def _no_index(tmp_path: Path) -> None:
    assert not list((tmp_path / "shards").glob("*/index.json"))
    assert_nothing_half_written(tmp_path)


def test_nsd_all_zero_session(nsd, tmp_path, request):
    fx, build = nsd
    betas = fx.read_session("subj02", 1)
    fx.write_session("subj02", 1, np.zeros_like(betas))
    path = fx.betas_path("subj02", 1)
    expect("all-zero session (NSD betas)", DataError, build(), path, "'subj02'", "session 1", "all-zero session",
           request=request)
    _no_index(tmp_path)
    assert not list((tmp_path / "shards").rglob("subj02-*.tar"))


def test_nsd_nifti_grid_mismatch(nsd, tmp_path, request):
    import nibabel as nib

    fx, build = nsd
    roi = fx.root / "nsddata/ppdata/subj02/func1pt8mm/roi/Kastner2015.nii.gz"
    nib.save(nib.Nifti1Image(fx.roi_labels["subj02"][:, :, :4].astype(np.float32), np.eye(4)), str(roi))
    expect("NIfTI with a mismatched grid (NSD ROI vs betas)", DataError, build(), "'subj02'", roi,
           fx.betas_path("subj02", 1), "(6, 7, 4)", "(6, 7, 5)", request=request)
    _no_index(tmp_path)


def test_nsd_hdf5_with_the_wrong_axis_order(nsd, tmp_path, request):
    import h5py

    fx, build = nsd
    path = fx.betas_path("subj02", 1, "hdf5")
    with h5py.File(path, "r") as f:
        betas = np.transpose(f["betas"][()])  # (X, Y, Z, T) as the fixture means it
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=betas)  # written without NSD's reversal: (X, Y, Z, T) on disk
    expect("HDF5 with the wrong axis order (NSD betas)", DataError, build(betas_format="hdf5"), "'subj02'", path,
           "(trials, Z, Y, X)", request=request)
    _no_index(tmp_path)


def test_nsd_roi_label_absent_from_the_ctab(nsd, tmp_path, request):
    fx, build = nsd
    ctab = fx.root / "nsddata/freesurfer/subj01/label/Kastner2015.mgz.ctab"
    expect("ROI label absent from the ctab", DataError, build(roi_groups={"V1": ["V1v", "V9x"]}), "'V9x'",
           "group 'V1'", ctab, request=request)
    _no_index(tmp_path)


def test_nsd_empty_roi_for_one_subject(nsd, tmp_path, request):
    import nibabel as nib

    fx, build = nsd
    roi = fx.root / "nsddata/ppdata/subj02/func1pt8mm/roi/Kastner2015.nii.gz"
    labels = fx.roi_labels["subj02"].copy()
    labels[np.isin(labels, (1, 2))] = 0  # V1v and V1d gone for this subject only
    nib.save(nib.Nifti1Image(labels.astype(np.float32), np.diag([1.8, 1.8, 1.8, 1.0])), str(roi))
    expect("empty ROI for one subject", DataError, build(), "'subj02'", "ROI group 'V1'", "has no voxels", roi,
           request=request)
    _no_index(tmp_path)


def test_nsd_nan_in_a_session(nsd, tmp_path, request):
    fx, build = nsd
    betas = fx.read_session("subj02", 1).astype(np.float32)
    x, y, z = np.argwhere(np.isin(fx.roi_labels["subj02"], (3, 4)))[0]
    betas[x, y, z, 5] = np.nan
    fx.write_session("subj02", 1, betas)
    expect("NaN voxels in a raw NSD session", DataError, build(), fx.betas_path("subj02", 1), "'subj02'",
           "session 1", "1 NaN/Inf", request=request)
    _no_index(tmp_path)


# --------------------------------------------------------------------------- HCP files


@pytest.fixture
def hcp(tmp_path, fresh_plugins):
    from foundation.data.shards import build_shards
    from tests.plugins.hcp_fixture import write_hcp_fixture

    fresh_plugins(HashGuidance)
    fx = write_hcp_fixture(tmp_path / "HCP", subjects=("100610", "102311"))

    def build():
        recipe = from_dict(Recipe, {
            "seed": 0,
            "datasets": [{"plugin": "hcp", "name": "hcp", "root": str(fx.root),
                          "options": {"segments": "clip_segments.json", "crop": "1:,1:-1,:-1", "val_seconds": 6,
                                      "val_gap": 2}}],
            "guidance": {"low": "robustness-hash", "high": "robustness-hash"},
            "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 32},
        })
        return lambda: build_shards(recipe, progress=False)

    return fx, build


def test_hcp_all_zero_run(hcp, tmp_path, request):
    from tests.plugins.hcp_fixture import write_nifti

    fx, build = hcp
    run = fx.run("102311", 3)
    write_nifti(run, np.zeros_like(fx.volume("102311", 3)))
    expect("all-zero run (HCP)", DataError, build(), "subject 102311", run, "all-zero run", request=request)
    _no_index(tmp_path)
    assert not list((tmp_path / "shards").rglob("102311-*.tar"))


def test_hcp_nifti_grid_mismatch(hcp, tmp_path, request):
    from tests.plugins.hcp_fixture import write_nifti

    fx, build = hcp
    run = fx.run("102311", 3)
    write_nifti(run, np.ones((9, 10, 7, 36), np.float32))
    expect("NIfTI with a mismatched grid (HCP runs)", DataError, build(), run, fx.run("100610", 1), "(9, 10, 7)",
           request=request)
    _no_index(tmp_path)


def test_hcp_truncated_nifti(hcp, tmp_path, request):
    fx, build = hcp
    run = fx.run("102311", 2)
    data = run.read_bytes()
    run.write_bytes(data[: len(data) // 2])
    expect("truncated NIfTI (HCP run)", DataError, build(), "hcp subject 102311", run, request=request)
    _no_index(tmp_path)



# --------------------------------------------------------------------------- guidance weights


def test_missing_guidance_weight_file(tmp_path, monkeypatch, request):
    """No weights on the machine and random weights not allowed: the build stops naming the file it needs."""
    import torch

    from foundation.data.shards import build_shards
    from foundation.core.errors import WeightsMissingError

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty-hub"))
    recipe = from_dict(Recipe, {
        "seed": 0,
        "datasets": [{"plugin": "synthetic", "options": dict(ROI)}],
        "guidance": {"low": "alexnet", "high": "alexnet"},
        "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 7},
    })
    err = expect("missing weight file (guidance network)", PluginError, lambda: build_shards(recipe, progress=False),
                 "'alexnet'", "alexnet-owt-7be5be79.pth", tmp_path / "empty-hub", "Nothing is downloaded",
                 request=request)
    assert isinstance(err.__cause__, WeightsMissingError)
    _no_index(tmp_path)
    assert not list((tmp_path / "shards").rglob("*.tar"))


def test_rerun_after_the_missing_weight_file_appears(tmp_path, request):
    """The failed build must not leave a feature-cache record that blocks the rerun once the file is there."""
    from foundation_vision.vit import VitGuidance
    from safetensors.torch import save_file

    from foundation.data.shards import build_shards
    from foundation.core.errors import WeightsMissingError

    weights = tmp_path / "weights" / "vit.safetensors"
    vit = {"model": "vit_tiny_patch16_224", "checkpoint": str(weights),
           "model_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}}
    recipe = from_dict(Recipe, {
        "seed": 0,
        "datasets": [{"plugin": "synthetic", "options": {**ROI, "n_subjects": 2}}],
        "guidance": {"low": "vit", "high": "vit", "options": {"vit": vit}},
        "shards": {"root": str(tmp_path / "shards"), "samples_per_shard": 7},
    })
    err = expect("missing weight file named in the recipe", PluginError, lambda: build_shards(recipe, progress=False),
                 "'vit'", weights, "guidance.options.vit.checkpoint", request=request)
    assert isinstance(err.__cause__, WeightsMissingError)
    _no_index(tmp_path)

    options = from_dict(VitGuidance.Options, {**vit, "checkpoint": "random"})
    net = VitGuidance(options, allow_random_weights=True).network()
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    index = build_shards(recipe, progress=False)["synthetic"]
    assert index.data["guidance"]["low"]["provenance"]["weights"] == str(weights)
