"""`foundation plot RUN_DIR`: the paper's figures from tiny finished runs (ROI, volume, and a comparison)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_recipe_dict

SHORT = {"steps": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 2}


def _train(root: Path, run: str, *, tokens: str = "subject", volume: dict | None = None) -> Path:
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe
    from foundation.workflows.train import train

    d = tiny_recipe_dict(root, **{"run.dir": str(root / run)})
    d["train"].update(SHORT)
    d["model"]["tokens"] = tokens
    if volume is not None:
        d["datasets"][0]["options"] = volume
        d["model"]["volume_channels"] = [4, 8]
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    train(recipe, progress=False)
    return root / run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs sharing one shard root: ROI CLIP-MUSED, ROI MS-EMB (identity token), volume."""
    root = tmp_path_factory.mktemp("plots")
    volume = {"mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 60, "n_categories": 4}
    return {"roi": _train(root, "roi"), "emb": _train(root, "emb", tokens="identity"),
            "volume": _train(root, "volume", volume=volume)}


def _check_png(path: Path, fig) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        size = img.size
    want = np.asarray(fig.get_size_inches()) * fig.dpi
    assert abs(size[0] - want[0]) <= 1 and abs(size[1] - want[1]) <= 1, (path.name, size, want)


def _check_distribution(att) -> None:
    """Each readout row over all tokens (readouts + patches) is a probability distribution."""
    assert att.mean, "no subject's attention was computed"
    for gid, rows in att.mean.items():
        assert rows.shape[0] == att.n_readout
        np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5, err_msg=gid)
        assert (rows >= 0).all() and (rows <= 1).all()
        assert att.count[gid] > 0


def _tick_labels(ax, which="x"):
    return [t.get_text() for t in (ax.get_xticklabels() if which == "x" else ax.get_yticklabels())]


def test_roi_run_figures(runs, tmp_path):
    from foundation.workflows.figures import run_figures, save_figures

    details = {}
    figs = run_figures(runs["roi"], details=details)
    assert list(figs) == ["training_curves", "attention_rois_synthetic", "token_rsm"]

    curves = figs["training_curves"]
    assert [ax.get_title() for ax in curves.axes] == ["validation", "training loss", "auxiliary losses (unweighted)"]
    assert {line.get_label() for line in curves.axes[0].lines} >= {"val mAP", "val AUC"}
    assert [s for s, _ in details["curves"]["val"]["mAP"]] == [2, 4]

    att = details["attention"]["synthetic"]
    _check_distribution(att)
    assert att.n_readout == 2 and set(att.mean) == {f"synthetic/sub-0{i}" for i in (1, 2, 3)}
    assert all(att.count[g] == 12 for g in att.mean)  # the shared test set
    bars = figs["attention_rois_synthetic"]
    assert len(bars.axes) == 3
    for ax, subject in zip(bars.axes, ("sub-01", "sub-02", "sub-03")):
        assert ax.get_title() == subject
        assert _tick_labels(ax) == ["roi1", "roi2", "roi3"]
        heights = np.array([p.get_height() for p in ax.patches]).reshape(2, 3)  # low bars, then high bars
        np.testing.assert_allclose(heights, att.patches(f"synthetic/{subject}"), rtol=1e-6)
        assert (heights >= 0).all() and (heights <= 1).all()
    assert [t.get_text() for t in bars.legends[0].get_texts()] == ["low-level token", "high-level token"]

    rsm = figs["token_rsm"]
    assert len(rsm.axes) == 3  # low, high, shared colour bar
    assert [ax.get_title() for ax in rsm.axes[:2]] == ["low-level token", "high-level token"]
    for ax in rsm.axes[:2]:
        assert _tick_labels(ax, "x") == _tick_labels(ax, "y") == ["sub-01", "sub-02", "sub-03"]
    for m in details["rsm"].values():
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
        np.testing.assert_allclose(m, m.T, atol=1e-12)

    paths = save_figures(figs, tmp_path / "out", close=False)
    assert [p.name for p in paths] == [f"{n}.png" for n in figs]
    for path, fig in zip(paths, figs.values()):
        _check_png(path, fig)
    assert not list((tmp_path / "out").glob(".tmp-*"))
    (pdf,) = save_figures({"token_rsm": rsm}, tmp_path / "out", fmt="pdf")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_volume_run_figures(runs, tmp_path):
    from foundation.model.adapters import VolumeAdapter
    from foundation.workflows.figures import run_figures, save_figures, token_map_to_grid
    from foundation.workflows.predict import run_shard_index

    details = {}
    figs = run_figures(runs["volume"], details=details)
    assert list(figs) == ["training_curves", "attention_volume_synthetic", "token_rsm"]
    att = details["attention"]["synthetic"]
    _check_distribution(att)
    assert set(att.mean) == {"synthetic/sub-01", "synthetic/sub-02"}
    adapter = VolumeAdapter((6, 7, 6), 16, [4, 8])
    assert att.mean["synthetic/sub-01"].shape == (2, 2 + adapter.num_tokens)  # out_grid 2×2×2

    fig = figs["attention_volume_synthetic"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"sub-0{s} · {t}-level token" for s in (1, 2) for t in ("low", "high")]
    affine, how = details["affine"]["synthetic"]
    assert "no real affine" in how
    # the grid's bounding box lands on the MNI brain's: voxel centres inside it, RAS, positive scale
    assert (np.diag(affine)[:3] > 0).all()
    corner = affine @ np.array([5.5, 6.5, 5.5, 1.0])
    assert -100 < affine[0, 3] < corner[0] < 100 and -140 < affine[1, 3] < corner[1] < 100

    # the painted map: each voxel holds its patch's attention; zero outside the subject's mask
    index = run_shard_index(runs["volume"], "synthetic")
    mask = index.mask("sub-01")
    for r in range(2):
        vol = np.where(mask, token_map_to_grid(att.patches("synthetic/sub-01")[r], (2, 2, 2), 4, (6, 7, 6)), 0)
        np.testing.assert_array_equal(details["maps"]["synthetic"]["sub-01"][r], vol)
        assert (vol[~mask] == 0).all() and (vol[mask] > 0).all() and vol.max() <= 1

    paths = save_figures(figs, tmp_path, close=False)
    for path, f in zip(paths, figs.values()):
        _check_png(path, f)


def test_token_map_to_grid_blocks():
    from foundation.model.adapters import VolumeAdapter
    from foundation.workflows.figures import token_map_to_grid

    adapter = VolumeAdapter((6, 7, 5), 8, [4, 4])  # factor 4 → out_grid (2, 2, 2), padded (8, 8, 8)
    assert adapter.out_grid == (2, 2, 2) and adapter.factor == 4
    values = np.zeros(adapter.num_tokens)
    values[np.ravel_multi_index((1, 0, 1), adapter.out_grid)] = 1.0  # C order, as the adapter flattens
    grid = token_map_to_grid(values, adapter.out_grid, adapter.factor, adapter.grid)
    assert grid.shape == (6, 7, 5)
    expected = np.zeros((6, 7, 5))
    expected[4:8, 0:4, 4:8] = 1.0  # the block [f·i, f·(i+1)) per axis, cropped to the grid
    np.testing.assert_array_equal(grid, expected)
    with pytest.raises(ValueError, match="out_grid"):
        token_map_to_grid(np.zeros(7), (2, 2, 2), 4, (6, 7, 5))


def test_grid_affine_standard_mni_and_crop():
    from foundation.workflows.figures import grid_affine

    affine, how = grid_affine((91, 109, 91))
    np.testing.assert_allclose(affine @ [45, 63, 36, 1], [0, 0, 0, 1])  # the MNI origin at 2 mm
    assert "2 mm" in how
    # the HCP plugin's default crop of the 1.6 mm grid: voxel 0 is raw voxel (2, 4, 0)
    affine, how = grid_affine((111, 127, 111), {"raw_grid": [113, 136, 113], "crop": "2:,4:-5,:-2"})
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [90 - 3.2, -126 + 6.4, -72, 1])
    assert "1.6 mm" in how and "cropped" in how
    recorded = np.diag([3.0, 3.0, 3.0, 1.0])
    assert np.array_equal(grid_affine((4, 4, 4), {"affine": recorded.tolist()})[0], recorded)
    # no real affine: the grid's voxel edges map onto the given bounding box
    affine, how = grid_affine((10, 20, 10), bbox=(np.array([-70.0, -100.0, -50.0]), np.array([70.0, 70.0, 80.0])))
    np.testing.assert_allclose(affine @ [-0.5, -0.5, -0.5, 1], [-70, -100, -50, 1])
    np.testing.assert_allclose(affine @ [9.5, 19.5, 9.5, 1], [70, 70, 80, 1])


def test_cli_plot_with_compare(runs, tmp_path, capsys):
    from foundation.cli import main
    from foundation.workflows.figures import compare_figure

    out = tmp_path / "figs"
    assert main(["plot", str(runs["roi"]), "--compare", str(runs["emb"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["training_curves.png", "attention_rois_synthetic.png", "token_rsm.png", "compare_per_subject.png"]
    assert [Path(p).name for p in printed] == names
    for name in names:
        assert (out / name).stat().st_size > 0

    a = json.loads((runs["roi"] / "metrics.json").read_text())["test"]["per_subject"]
    b = json.loads((runs["emb"] / "metrics.json").read_text())["test"]["per_subject"]
    fig = compare_figure({k: v["mAP"] for k, v in a.items()}, {k: v["mAP"] for k, v in b.items()},
                         names=("roi", "emb"))
    assert len(fig.axes) == 2
    bars, scatter = fig.axes
    assert _tick_labels(bars) == ["sub-01", "sub-02", "sub-03"]
    np.testing.assert_allclose([p.get_height() for p in bars.patches[:3]], [a[s]["mAP"] for s in sorted(a)])
    assert scatter.get_xlabel() == "emb mAP" and scatter.get_ylabel() == "roi mAP"
    assert "of 3 subjects" in scatter.get_title()
    from PIL import Image

    with Image.open(out / "compare_per_subject.png") as img:
        assert img.format == "PNG" and img.size == tuple(round(v) for v in fig.get_size_inches() * fig.dpi)


def test_identity_tokens_one_readout(runs):
    """MS-EMB (one subject token): one bar per ROI (paper Fig. F9), one RSM panel."""
    from foundation.workflows.figures import run_figures

    details = {}
    figs = run_figures(runs["emb"], details=details)
    att = details["attention"]["synthetic"]
    _check_distribution(att)
    assert att.n_readout == 1
    ax = figs["attention_rois_synthetic"].axes[0]
    assert len(ax.patches) == 3
    assert [t.get_text() for t in figs["attention_rois_synthetic"].legends[0].get_texts()] == ["subject token"]
    assert [a.get_title() for a in figs["token_rsm"].axes[:1]] == ["subject token"]
    assert len(figs["token_rsm"].axes) == 2


def test_compare_needs_shared_subjects(runs, tmp_path):
    from foundation.core.errors import FoundationError
    from foundation.workflows.figures import plot_run

    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"test": {"per_subject": {"x/sub-99": {"mAP": 0.5}}}}))
    with pytest.raises(FoundationError, match="share no subject"):
        plot_run(runs["roi"], out=tmp_path / "o", compare=other)


def test_compare_merges_single_subject_runs(runs, tmp_path):
    """--compare with one run per subject (SS-ViT): the per-subject scores are merged by subject."""
    from foundation.core.errors import FoundationError
    from foundation.workflows.figures import run_figures

    emb = json.loads((runs["emb"] / "metrics.json").read_text())["test"]["per_subject"]
    singles = []
    for i, (subject, values) in enumerate(sorted(emb.items())):
        d = tmp_path / f"ss-vit-seed0-{subject.replace('/', '-')}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"test": {"per_subject": {subject: {"mAP": 0.1 * (i + 1)}}}}))
        singles.append(d)
    figs = run_figures(runs["roi"], compare=singles)
    bars, scatter = figs["compare_per_subject"].axes
    n = len(emb)
    np.testing.assert_allclose([p.get_height() for p in bars.patches[n:2 * n]], [0.1 * (i + 1) for i in range(n)])
    assert scatter.get_xlabel() == f"ss-vit-seed0-synthetic-sub-… ({n} runs) mAP"
    with pytest.raises(FoundationError, match="more than one"):
        run_figures(runs["roi"], compare=[singles[0], singles[0]])


def test_missing_shards_are_named(runs, tmp_path):
    import shutil

    import yaml

    from foundation.core.errors import ShardError
    from foundation.workflows.figures import run_figures

    moved = tmp_path / "moved"
    shutil.copytree(runs["roi"], moved, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["shards"] = {"synthetic": str(tmp_path / "gone" / "synthetic-x")}
    (moved / "metrics.json").write_text(json.dumps(metrics))
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["shards"]["root"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ShardError, match="not on this machine") as err:
        run_figures(moved)
    assert str(tmp_path / "gone") in str(err.value)
