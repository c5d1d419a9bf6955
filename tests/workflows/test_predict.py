"""``foundation predict``: shards, .npy arrays and NIfTI images of known subjects → label probabilities."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from foundation.core.errors import DataError, ShardError, UnknownSubjectError
from tests.conftest import tiny_recipe_dict

LABELS = ["person", "dog", "cat", "car"]  # the tiny synthetic world's 4 categories


def _train(root: Path, *, volume: bool = False):
    """Train a tiny run under ``root`` (the ``tiny_recipe`` fixture's recipe, a few steps only);
    returns ``(recipe, run_dir, shard_dir)``."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe
    from foundation.workflows.train import train

    d = tiny_recipe_dict(root, **{"train.steps": 4, "train.eval_every": 2, "train.checkpoint_every": 4,
                                  "train.lr": 0.03})  # a large step: probabilities well away from 0.5
    if volume:  # HCP-like: 2 subjects watching a 60 s movie on a 6×7×6 grid
        d["datasets"][0]["options"] = {"mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 60,
                                       "n_categories": 4}
        d["model"]["volume_channels"] = [4, 8]
        d["train"].update(steps=2, checkpoint_every=2)
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    train(recipe, progress=False)
    return recipe, root / "run", next((root / "shards").glob("synthetic-*"))


@pytest.fixture(scope="module")
def roi_run(tmp_path_factory):
    """One tiny ROI run shared by this module's tests."""
    return _train(tmp_path_factory.mktemp("roi"))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """One tiny volume-mode run."""
    return _train(tmp_path_factory.mktemp("volume"), volume=True)


def _probs(records) -> dict:
    return {r["key"]: np.array(list(r["probabilities"].values())) for r in records}


def _forward(run_dir: Path, x: np.ndarray, subject: str) -> np.ndarray:
    """A direct forward pass of the run's best model: ``x`` ``(B, T, D)`` → ``(B, C)`` probabilities."""
    from foundation.engine.checkpoint import load_model

    model, _ = load_model(run_dir / "best")
    model.eval()
    with torch.no_grad():
        out = model("synthetic", torch.from_numpy(x).float(), model.subject_index([subject] * len(x)))
    return torch.sigmoid(out.logits).numpy()


def test_shards_match_trainer_predictions(roi_run):
    from safetensors.torch import load_file

    from foundation.workflows.predict import predict_run
    from foundation.engine.trainer import Trainer

    recipe, run_dir, shards = roi_run
    trainer = Trainer(recipe, progress=False)
    trainer.core.load_state_dict(load_file(str(run_dir / "best" / "model.safetensors")))
    expected = trainer.predict("test")["synthetic"]

    records = predict_run(run_dir, shards / "test", batch_size=5, progress=False)
    got = _probs(records)
    assert sorted(got) == expected["keys"]  # every test sample once
    for key, p in zip(expected["keys"], expected["probs"]):
        np.testing.assert_allclose(got[key], p, atol=1e-5)
    assert {r["subject"] for r in records} == {"synthetic/sub-01", "synthetic/sub-02", "synthetic/sub-03"}

    one_tar = min((shards / "test").glob("sub-02-*.tar"))
    single = predict_run(run_dir, one_tar, progress=False)
    assert single and all(r["subject"] == "synthetic/sub-02" for r in single)
    for r in single:
        np.testing.assert_allclose(_probs([r])[r["key"]], got[r["key"]], atol=1e-6)
    only = predict_run(run_dir, shards / "test", subject="sub-03", progress=False)
    assert {r["subject"] for r in only} == {"synthetic/sub-03"} and len(only) == 12


def test_npy_matches_direct_forward(roi_run, tmp_path):
    from foundation.workflows.predict import predict_run

    _, run_dir, _ = roi_run
    x = np.random.default_rng(0).standard_normal((7, 3, 8)).astype(np.float16).astype(np.float32)
    path = tmp_path / "scans.npy"
    np.save(path, x)
    records = predict_run(run_dir, path, subject="sub-02", batch_size=3, progress=False)
    assert [r["key"] for r in records] == list(range(7))
    assert {r["subject"] for r in records} == {"synthetic/sub-02"}
    got = np.stack([list(r["probabilities"].values()) for r in records])
    np.testing.assert_allclose(got, _forward(run_dir, x, "synthetic/sub-02"), atol=1e-6)
    # the global id works as well, and another subject's tokens give other probabilities
    again = predict_run(run_dir, path, subject="synthetic/sub-02", batch_size=3, progress=False)
    assert [r["probabilities"] for r in again] == [r["probabilities"] for r in records]
    other = predict_run(run_dir, path, subject="sub-01", progress=False)
    assert not np.allclose(np.stack([list(r["probabilities"].values()) for r in other]), got, atol=1e-7)


def test_csv_and_json_outputs(roi_run, tmp_path, capsys):
    from foundation.cli import main
    from foundation.workflows.predict import predict_run

    _, run_dir, shards = roi_run
    records = predict_run(run_dir, shards / "test", output=tmp_path / "p.csv", threshold=0.5, progress=False)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert list(rows[0]) == ["key", "subject", *LABELS, "predicted"]
    assert [r["key"] for r in rows] == [r["key"] for r in records]
    for row, rec in zip(rows, records):
        assert [float(row[n]) for n in LABELS] == pytest.approx(list(rec["probabilities"].values()), abs=1e-12)
        above = [n for n in LABELS if float(row[n]) > 0.5]
        assert (row["predicted"].split(";") if row["predicted"] else []) == above

    predict_run(run_dir, shards / "test", output=tmp_path / "p.json", threshold=0.5, progress=False)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data == json.loads(json.dumps(records))
    assert all(list(r["probabilities"]) == LABELS for r in data)
    assert all(r["predicted"] == [n for n in LABELS if r["probabilities"][n] > 0.5] for r in data)
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically

    # the command line: JSON to stdout by default, --format csv, errors as exit code 2
    x = np.zeros((2, 3, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(run_dir), str(tmp_path / "x.npy"), "--subject", "sub-01", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in out] == [0, 1] and list(out[0]["probabilities"]) == LABELS
    assert main(["predict", str(run_dir), str(tmp_path / "x.npy"), "--subject", "sub-01", "--no-progress",
                 "--format", "csv", "--threshold", "0.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "key,subject,person,dog,cat,car,predicted" and lines[1].endswith(",person;dog;cat;car")
    assert main(["predict", str(run_dir), str(tmp_path / "x.npy"), "--subject", "sub-99", "--no-progress"]) == 2
    assert "sub-99" in capsys.readouterr().err


def test_bad_inputs_name_the_file_sample_and_subject(roi_run, tmp_path):
    from foundation.workflows.predict import predict_run

    _, run_dir, _ = roi_run
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((4, 3, 8), np.float32))
    with pytest.raises(UnknownSubjectError, match=r"sub-99.*synthetic/sub-01.*synthetic/sub-03"):
        predict_run(run_dir, good, subject="sub-99", progress=False)
    with pytest.raises(UnknownSubjectError, match="other/sub-01"):
        predict_run(run_dir, good, subject="other/sub-01", progress=False)
    with pytest.raises(Exception, match="pass the subject"):
        predict_run(run_dir, good, progress=False)

    wrong = tmp_path / "wrong_shape.npy"
    np.save(wrong, np.zeros((4, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"wrong_shape\.npy.*\(4, 8, 3\).*\(N, 3, 8\)"):
        predict_run(run_dir, wrong, subject="sub-01", progress=False)
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((4, 3, 8), np.int64))
    with pytest.raises(DataError, match=r"ints\.npy.*int64"):
        predict_run(run_dir, ints, subject="sub-01", progress=False)

    x = np.zeros((6, 3, 8), np.float32)
    x[4, 1, 2] = np.nan
    nan = tmp_path / "nan.npy"
    np.save(nan, x)
    with pytest.raises(DataError, match=r"nan\.npy: sample 4 has 1 NaN"):
        predict_run(run_dir, nan, subject="sub-01", batch_size=3, output=tmp_path / "out.json", progress=False)
    assert not (tmp_path / "out.json").exists()  # nothing half-written
    x[4, 1, 2] = np.inf
    np.save(nan, x)
    with pytest.raises(DataError, match=r"sample 4 has 0 NaN and 1 Inf"):
        predict_run(run_dir, nan, subject="sub-01", progress=False)


def test_volume_nifti_matches_shards(volume_run, tmp_path):
    import nibabel as nib

    from foundation.data.index import read_index
    from foundation.data.loader import decode
    from foundation.data.tars import read_tars
    from foundation.workflows.predict import predict_run

    _, run_dir, shards = volume_run
    index = read_index(shards)
    tars = index.shards("test", {"sub-02"})
    samples = [decode(s) for s in read_tars([{"url": str(p)} for p, _, _ in tars], expected={})]
    mask = index.mask("sub-02")
    grid = tuple(index.data["grid"])
    vol = np.full((*grid, len(samples)), np.nan, np.float32)  # NaN outside the brain is ignored
    vol.reshape(-1, len(samples))[np.flatnonzero(mask)] = np.stack([s["fmri"] for s in samples], 1)
    path = tmp_path / "sub-02.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)

    from_shards = predict_run(run_dir, shards / "test", subject="sub-02", progress=False)
    assert [r["key"] for r in from_shards] == [s["key"] for s in samples]
    from_nifti = predict_run(run_dir, path, subject="synthetic/sub-02", batch_size=5, progress=False)
    assert [r["key"] for r in from_nifti] == list(range(len(samples)))
    np.testing.assert_allclose(np.stack([list(r["probabilities"].values()) for r in from_nifti]),
                               np.stack([list(r["probabilities"].values()) for r in from_shards]), atol=1e-5)

    # wrong grid, NaN in the brain, an .npy for a volume dataset: clear errors naming the file
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 5, 2), np.float32), np.eye(4)), tmp_path / "small.nii")
    with pytest.raises(DataError, match=r"small\.nii.*\(6, 7, 5, 2\).*\(6, 7, 6\)"):
        predict_run(run_dir, tmp_path / "small.nii", subject="sub-02", progress=False)
    bad = np.nan_to_num(vol.copy())
    bad[..., 3][mask] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(DataError, match=r"bad\.nii\.gz: sample 3 has \d+ NaN"):
        predict_run(run_dir, tmp_path / "bad.nii.gz", subject="sub-02", progress=False)
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8), np.float32))
    with pytest.raises(DataError, match="volume dataset"):
        predict_run(run_dir, tmp_path / "x.npy", subject="sub-02", progress=False)

    # without the run's shards the mask is missing: the error names the index file it needs
    moved = shards.with_name(shards.name + "-moved")
    shards.rename(moved)
    try:
        with pytest.raises(ShardError, match=rf"{shards.name}/index\.json.*masks/"):
            predict_run(run_dir, path, subject="sub-02", progress=False)
    finally:
        moved.rename(shards)


def test_unknown_subject_in_shards(roi_run, tmp_path):
    """Shards of a subject the model was not trained on (a single-subject run) are refused by name."""
    from foundation.engine.checkpoint import load_model, save_model
    from foundation.model import CLIPMUSED
    from foundation.workflows.predict import predict_run

    _, run_dir, shards = roi_run
    model, meta = load_model(run_dir / "best")
    spec = model.config_dict()
    spec["vocab"] = ["synthetic/sub-01"]
    small = CLIPMUSED.from_config_dict(spec)
    save_model(small, tmp_path / "run" / "best", meta=meta)
    shutil.copy(run_dir / "config.yaml", tmp_path / "run" / "config.yaml")
    with pytest.raises(UnknownSubjectError, match=r"sub-02.*knows \['synthetic/sub-01'\]"):
        predict_run(tmp_path / "run", shards / "test", progress=False)
