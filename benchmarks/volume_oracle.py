"""What pooling could give on the volume world if every subject were aligned perfectly (issue 14, diagnosis).

    OMP_NUM_THREADS=1 python benchmarks/volume_oracle.py recipes/synthetic_volume.yaml --world-seeds 0 1 2 3 4 5

``benchmarks/volume_ceiling.py`` bounds pooling by *repetitions of one subject* (six recordings of the same
brain); the world's subjects differ more than that: their area maps move (sd 1 voxel), and half of each
area's tuning to the stimulus codes is the subject's own (docs/WORLDS.md). This script asks the question
with the world's own answer key: each subject's twelve area maps are taken from the generator (an
*oracle* alignment no method has), each recording is reduced to its twelve area signals by generalised
least squares through those maps (noise variance per voxel from the recording's residual against its
noise-free twin), and the bench's ridge read-out (``foundation.workflows.linear.fit_subject``, alpha on
validation, test mAP per subject, mean over subjects) is fitted

* ``per subject``: on the subject's own area signals — perfect knowledge of its maps, no pooling;
* ``pooled``: one read-out on all subjects' area signals (area ``k`` is the same area in every subject),
  scored on each subject's own test seconds — perfect alignment *and* pooling;

beside the per-subject ridge on voxels (the ``ridge`` bench row, recomputed) and the same two read-outs on
the noise-free area drives (what a recording could carry at most), and

* ``pooled, area signals aligned to the codes``: each subject's area signals first mapped by ridge onto the
  stimulus's planted codes (its own training seconds), then one read-out on all subjects — the perfect-map
  version of the pooled aligned ridge (``aligned-ridge``), which undoes each subject's own tuning before pooling;
  beside it ``per subject, area signals aligned to the codes`` (the same features, one read-out per subject), so
  that the pooling gap is measured in both spaces. The pooled-minus-per-subject gap is
what six perfectly aligned subjects add on this world; the pooled-minus-voxel-ridge gap is the room any
pooled method has above the yardstick. ``--practical`` adds the same read-outs on maps *estimated* from
the recordings (:func:`practical`: per-subject PCA, SRM's jointly fitted maps, alignment onto the codes). Nothing
is trained or chosen on test; no shards are read.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volume_ceiling import _noise_model, _splits, _test_map  # noqa: E402


def area_signals(fmri: np.ndarray, clean: np.ndarray, maps: np.ndarray, drive: np.ndarray) -> np.ndarray:
    """``(T, K)`` area signals of the recording ``fmri`` (T, V) by generalised least squares through the maps as
    the recording sees them (z-scored: each voxel's map scaled by its gain against the noise-free twin)."""
    explained, sd = _noise_model(clean, fmri)
    signal = drive @ maps.T
    gain = explained.std(0) / (signal.std(0) + 1e-12)  # recording units per generator unit, per voxel
    a = maps * gain[:, None]  # (V, K)
    w = 1.0 / (sd**2 + 1e-12)  # (V,) inverse noise variance
    lhs = a.T @ (a * w[:, None])  # (K, K)
    centred = fmri - fmri.mean(0)
    return np.linalg.solve(lhs, (a * w[:, None]).T @ centred.T).T


def planted_codes(world: Any) -> dict[str, np.ndarray]:
    """``split -> (seconds, low + high)``: the planted codes of every second of the movie (every subject saw it)."""
    rows, splits = world.splits_for(world.subjects[0])
    where = np.array(splits)
    codes = np.concatenate([world.stimuli.low[rows], world.stimuli.high[rows]], 1)
    return {split: codes[where == split] for split in ("train", "val", "test")}


def to_codes(parts: dict[str, SimpleNamespace], codes: dict[str, np.ndarray]) -> dict[str, SimpleNamespace]:
    """``parts`` with its features replaced by their ridge prediction of the planted codes (low ⊕ high) of each
    second, fitted on the training split (alpha by sklearn's efficient leave-one-out): the subject's signals
    brought into the stimulus's own space, as ``model.alignment: guidance-ridge`` does with voxels."""
    from sklearn.linear_model import RidgeCV

    fit = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(parts["train"].x, codes["train"])
    return {k: SimpleNamespace(x=fit.predict(v.x), y=v.y) for k, v in parts.items()}


def _val_test(parts: list[dict[str, SimpleNamespace]], *, pooled: bool) -> tuple[float, list[float]]:
    """(subject-mean validation mAP, per-subject test mAPs) of one ridge read-out per subject, or of one pooled."""
    import torch

    from foundation.objectives.metrics import multilabel_metrics
    from foundation.workflows.linear import fit_subject

    def score(predict, p, split):
        probs = torch.from_numpy(predict(p[split].x)).float()
        return float(multilabel_metrics(probs, torch.from_numpy(p[split].y).int())["mAP"])

    if pooled:
        stack = {s: SimpleNamespace(x=np.concatenate([p[s].x for p in parts]),
                                    y=np.concatenate([p[s].y for p in parts])) for s in ("train", "val")}
        predicts = [fit_subject(stack["train"], stack["val"], solver="ridge")[2]] * len(parts)
    else:
        predicts = [fit_subject(p["train"], p["val"], solver="ridge")[2] for p in parts]
    return (float(np.mean([score(f, p, "val") for f, p in zip(predicts, parts)])),
            [score(f, p, "test") for f, p in zip(predicts, parts)])


def practical(options: Any, *, world_seed: int, ks: tuple[int, ...]) -> dict[str, tuple[int | None, list[float]]]:
    """The same questions with the maps *estimated*: ``name -> (k chosen on validation, per-subject test mAPs)``.

    * ``PCA per subject``: each subject's voxels projected on its own first ``k`` principal components (training
      seconds), one ridge read-out per subject — the subject's low-rank structure, no pooling;
    * ``PCA -> codes, per subject`` / ``pooled``: those components mapped onto the planted codes (:func:`to_codes`),
      then one read-out per subject or one for all;
    * ``voxels -> codes, pooled``: the voxels mapped onto the codes, one read-out for all (``aligned-ridge``'s
      recipe without its guidance basis);
    * ``SRM per subject``: BrainIAK's shared response model (``k`` features, 10 iterations) fitted on all subjects'
      training seconds — maps estimated *together* — then one read-out per subject on ``W_iᵀ x``.

    ``k`` is chosen from ``ks`` on the subject-mean validation mAP, as the bench chooses its settings."""
    from foundation_synthetic.world import World

    world = World(dataclasses.replace(options, world_seed=world_seed))
    st = world.stimuli
    data = [world.subject(s) for s in world.subjects]
    rows, splits = world.splits_for(world.subjects[0])
    where = np.array(splits)
    y = st.labels[rows]
    codes = planted_codes(world)
    xs = [d.fmri.astype(np.float64) for d in data]
    xs = [(x - x[where == "train"].mean(0)) / (x[where == "train"].std(0) + 1e-8) for x in xs]
    out: dict[str, tuple[int | None, list[float]]] = {}
    out["voxels -> codes, pooled"] = (None, _val_test([to_codes(_splits(x, y, splits), codes) for x in xs],
                                                      pooled=True)[1])
    found: dict[str, list[tuple[float, list[float], int]]] = {}
    bases = [np.linalg.svd(x[where == "train"], full_matrices=False)[2] for x in xs]  # (min(T, V), V) each
    for k in ks:
        pca = [_splits(x @ vt[:k].T, y, splits) for x, vt in zip(xs, bases)]
        aligned = [to_codes(p, codes) for p in pca]
        for name, parts, pooled in (("PCA per subject", pca, False), ("PCA -> codes, per subject", aligned, False),
                                    ("PCA -> codes, pooled", aligned, True)):
            found.setdefault(name, []).append((*_val_test(parts, pooled=pooled), k))
    try:
        from brainiak.funcalign.srm import SRM
    except ImportError:
        SRM = None
    if SRM is not None:
        for k in ks:
            np.random.seed(0)  # BrainIAK draws its initial maps from numpy's global generator
            srm = SRM(n_iter=10, features=k).fit([x[where == "train"].T for x in xs])
            found.setdefault("SRM per subject", []).append(
                (*_val_test([_splits(x @ srm.w_[i], y, splits) for i, x in enumerate(xs)], pooled=False), k))
    for name, results in found.items():
        _, tests, k = max(results, key=lambda r: r[0])
        out[name] = (k, tests)
    return out


def measure(options: Any, *, world_seed: int) -> dict[str, list[float]]:
    """Per-subject test mAP of each read-out (lists in subject order)."""
    from foundation_synthetic.world import World

    world = World(dataclasses.replace(options, world_seed=world_seed))
    quiet = World(dataclasses.replace(options, world_seed=world_seed, noise=0.0))
    st = world.stimuli
    voxels, est, drives = [], [], []
    for subject in world.subjects:
        data, data0 = world.subject(subject), quiet.subject(subject)
        maps, drive = world.area_maps(subject)  # the generator's answer key (same draws as data.fmri's)
        y = st.labels[data.stimulus_rows]
        voxels.append(_splits(data.fmri, y, data.splits))
        est.append(_splits(area_signals(data.fmri, data0.fmri, maps, drive), y, data.splits))
        drives.append(_splits(drive, y, data.splits))
    aligned = [to_codes(p, planted_codes(world)) for p in est]
    return {
        "ridge, voxels": [_test_map(p) for p in voxels],
        "per subject, area signals (maps known)": [_test_map(p) for p in est],
        "pooled, area signals (maps known)": _val_test(est, pooled=True)[1],
        "per subject, area signals aligned to the codes": [_test_map(p) for p in aligned],
        "pooled, area signals aligned to the codes": _val_test(aligned, pooled=True)[1],
        "per subject, noise-free area drives": [_test_map(p) for p in drives],
        "pooled, noise-free area drives": _val_test(drives, pooled=True)[1],
    }


def main(argv: list[str] | None = None) -> int:
    from scipy.stats import ttest_rel

    from foundation.core.convert import from_dict
    from foundation.core.recipe import load_recipe
    from foundation_synthetic.world import SyntheticOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--world-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--practical", action="store_true",
                   help="also the estimated-map pipelines (PCA, alignment to the codes, SRM; practical())")
    p.add_argument("--ks", type=int, nargs="+", default=[8, 12, 16, 24, 32, 48, 64],
                   help="component counts searched by --practical (chosen on validation)")
    args = p.parse_args(argv)
    cfg = load_recipe(args.recipe, args.overrides).datasets[0]
    options = from_dict(SyntheticOptions, cfg.options, path="datasets.0.options")
    if cfg.plugin != "synthetic" or options.mode != "volume":
        print(f"{args.recipe}: the first dataset is not the synthetic world in volume mode", file=sys.stderr)
        return 1
    for w in args.world_seeds:
        m = measure(options, world_seed=w)
        ref = m["ridge, voxels"]
        print(f"world_seed {w}: " + " | ".join(f"{k} {np.mean(v):.4f}" for k, v in m.items()))
        for key in ("per subject, area signals (maps known)", "pooled, area signals (maps known)",
                    "pooled, area signals aligned to the codes"):
            diff = np.array(m[key]) - np.array(ref)
            print(f"  {key} vs ridge, voxels: diff {diff.mean():+.4f}, better on {(diff > 0).sum()} of {len(diff)}, "
                  f"paired t p = {ttest_rel(m[key], ref).pvalue:.2g}")
        for space, pooled, own in (("area signals", "pooled, area signals (maps known)",
                                     "per subject, area signals (maps known)"),
                                    ("aligned to the codes", "pooled, area signals aligned to the codes",
                                     "per subject, area signals aligned to the codes")):
            gap = np.array(m[pooled]) - np.array(m[own])
            print(f"  pooling, maps known, {space} (pooled - per subject): {gap.mean():+.4f}, better on "
                  f"{(gap > 0).sum()} of {len(gap)}, paired t p = {ttest_rel(m[pooled], m[own]).pvalue:.2g}")
        for k, v in m.items():
            print(f"    {k:48s} {' '.join(f'{x:.3f}' for x in v)}")
        if args.practical:
            for name, (k, tests) in practical(options, world_seed=w, ks=tuple(args.ks)).items():
                diff = np.array(tests) - np.array(ref)
                chosen = f" (k = {k})" if k is not None else ""
                print(f"  estimated maps: {name}{chosen} {np.mean(tests):.4f}, vs ridge, voxels {diff.mean():+.4f}, "
                      f"better on {(diff > 0).sum()} of {len(diff)}, paired t p = {ttest_rel(tests, ref).pvalue:.2g}")
    rerun = (f"OMP_NUM_THREADS=1 python benchmarks/volume_oracle.py {args.recipe} {' '.join(args.overrides)} "
             f"--world-seeds {' '.join(map(str, args.world_seeds))}"
             + (f" --practical --ks {' '.join(map(str, args.ks))}" if args.practical else ""))
    print("rerun: " + rerun.replace("  ", " "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
