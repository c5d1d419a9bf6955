"""How far above the per-subject ridge read-out can anything get on the volume world? (issue 14, diagnosis)

    OMP_NUM_THREADS=1 python benchmarks/volume_ceiling.py recipes/synthetic_volume.yaml --world-seeds 0 1 2

Issue 14 asks a network to beat the per-subject linear read-out on the volume world. This script
measures, from the generator itself (no shards, no training), the read-outs that bound what any method
fed these recordings could do, each scored as ``foundation bench`` scores its rows (the test mAP of
each subject, then the mean over subjects; regularisation chosen on validation mAP):

* ``ridge, voxels`` — the ``ridge`` bench row (``foundation.workflows.linear.fit_subject``) on the
  subject's voxels as the recipe draws them: the yardstick, recomputed here as a check.
* ``ridge, noise-free voxels`` — the same read-out on the same subject's voxels drawn with
  ``noise = 0`` (every other draw unchanged): what a per-subject read-out could reach with unlimited
  signal-to-noise, i.e. the most that pooling subjects could add by averaging noise away.
* ``ridge, R repetitions`` — the same read-out fitted on ``R`` recordings of the training seconds
  (the recorded one and ``R − 1`` fresh noise draws), validated and tested on the recorded validation
  and test seconds: what a read-out of this subject could reach if it had ``R`` times the training data
  of its own — with ``R = 6``, the most that pooling six *perfectly aligned* subjects could give it,
  since test inputs keep their noise. Fresh draws: each voxel of the recording is split into the part
  its noise-free twin explains and a residual (least squares over time), and a new draw adds Gaussian
  noise of the residual's standard deviation to the explained part.
* ``ridge, planted codes`` — the same read-out on the stimulus's planted low ⊕ high codes of each second
  (the ``planted`` guidance): what any read-out of any brain could reach from the information the world
  plants, with these training seconds. Subject-independent (everyone watches the same movie).
* the scene counts behind it: how many runs of one label set the training seconds hold, and what
  fraction of the test (and of the validation) seconds show a label set that no training second shows.

Prints one line per world and measure; the generator's options come from the recipe's first dataset
(``world_seed`` replaced per ``--world-seeds``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np


def _splits(x: np.ndarray, y: np.ndarray, splits: list[str]) -> dict[str, SimpleNamespace]:
    """``split -> (x (n, F), y (n, C))`` in the shape ``fit_subject`` reads."""
    where = np.array(splits)
    return {s: SimpleNamespace(x=x[where == s].astype(np.float64), y=y[where == s].astype(np.float64))
            for s in ("train", "val", "test")}


def _test_map(parts: dict[str, SimpleNamespace]) -> float:
    """Test mAP of the bench's ridge read-out fitted on train, its alpha chosen on val."""
    import torch

    from foundation.objectives.metrics import multilabel_metrics
    from foundation.workflows.linear import fit_subject

    _, _, predict = fit_subject(parts["train"], parts["val"], solver="ridge")
    probs = torch.from_numpy(predict(parts["test"].x)).float()
    return float(multilabel_metrics(probs, torch.from_numpy(parts["test"].y).int())["mAP"])


def _noise_model(clean: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(explained (T, V), residual sd (V,))``: each voxel of ``noisy`` (T, V) fitted by least squares over
    time as ``gain · clean`` (its noise-free twin) plus a residual."""
    clean, noisy = clean.astype(np.float64), noisy.astype(np.float64)
    gain = (clean * noisy).sum(0) / ((clean**2).sum(0) + 1e-12)
    explained = clean * gain
    return explained, (noisy - explained).std(0)


def _repeated(parts: dict[str, SimpleNamespace], explained: np.ndarray, sd: np.ndarray, *,
              repeats: int, seed: int) -> dict[str, SimpleNamespace]:
    """``parts`` with its training split stacked ``repeats`` times: the recording, then ``repeats − 1`` draws of
    ``explained`` (its training seconds, ``(n_train, V)``) plus Gaussian noise of standard deviation ``sd``."""
    if repeats <= 1:
        return parts
    rng = np.random.default_rng(seed)
    draws = [explained + sd * rng.normal(size=explained.shape) for _ in range(repeats - 1)]
    tr = parts["train"]
    x = np.concatenate([tr.x, *draws])
    return {**parts, "train": SimpleNamespace(x=x, y=np.concatenate([tr.y] * repeats))}


def _scenes(labels: np.ndarray) -> int:
    """Number of runs of identical label rows ``(T, C)`` (a scene boundary where the label set changes)."""
    return int(1 + (np.abs(np.diff(labels.astype(int), axis=0)).sum(1) > 0).sum())


def measure(options, *, world_seed: int, repeats: tuple[int, ...] = (6,)) -> dict[str, Any]:
    """The ceiling read-outs of one world (options: the recipe's ``SyntheticOptions``): the mean over subjects
    of each measure (floats), the scene counts, and ``per-subject voxels`` / ``per-subject noise-free``
    (lists of test mAP in subject order)."""
    from foundation_synthetic.world import World

    world = World(dataclasses.replace(options, world_seed=world_seed))
    quiet = World(dataclasses.replace(options, world_seed=world_seed, noise=0.0))
    st = world.stimuli
    out: dict[str, Any] = {}
    voxels, clean = [], []
    more: dict[int, list[float]] = {r: [] for r in repeats}
    for i, subject in enumerate(world.subjects):
        data, data0 = world.subject(subject), quiet.subject(subject)
        y = st.labels[data.stimulus_rows]
        parts = _splits(data.fmri, y, data.splits)
        voxels.append(_test_map(parts))
        clean.append(_test_map(_splits(data0.fmri, y, data0.splits)))
        explained, sd = _noise_model(data0.fmri, data.fmri)
        explained = explained[np.array(data.splits) == "train"]
        for r in repeats:
            more[r].append(_test_map(_repeated(parts, explained, sd, repeats=r, seed=1000 * world_seed + i)))
    out["ridge, voxels"] = float(np.mean(voxels))
    out["ridge, noise-free voxels"] = float(np.mean(clean))
    for r in repeats:
        out[f"ridge, {r} repetitions"] = float(np.mean(more[r]))
    rows, splits = world.splits_for(world.subjects[0])
    codes = np.concatenate([st.low[rows], st.high[rows]], 1)
    out["ridge, planted codes"] = _test_map(_splits(codes, st.labels[rows], splits))
    where = np.array(splits)
    train_sets = {tuple(r) for r in st.labels[rows][where == "train"]}
    out["training scenes"] = _scenes(st.labels[rows][where == "train"])
    for split in ("val", "test"):
        seconds = st.labels[rows][where == split]
        out[f"{split} seconds with an unseen label set"] = float(np.mean([tuple(r) not in train_sets for r in seconds]))
    out["per-subject voxels"] = voxels
    out["per-subject noise-free"] = clean
    return out


def main(argv: list[str] | None = None) -> int:
    from foundation.core.recipe import load_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--world-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, nargs="+", default=[6, 30],
                   help="training-data multiples R of the 'ridge, R repetitions' rows (default 6 30)")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.datasets[0]
    if cfg.plugin != "synthetic":
        print(f"{args.recipe}: the first dataset is {cfg.plugin!r}, not the synthetic world", file=sys.stderr)
        return 1
    from foundation.core.convert import from_dict
    from foundation_synthetic.world import SyntheticOptions

    options = from_dict(SyntheticOptions, cfg.options, path="datasets.0.options")
    if options.mode != "volume":
        print(f"{args.recipe}: the synthetic world is in {options.mode!r} mode, not 'volume'", file=sys.stderr)
        return 1
    for w in args.world_seeds:
        m = measure(options, world_seed=w, repeats=tuple(args.repeats))
        reps = " | ".join(f"ridge, {r} repetitions {m[f'ridge, {r} repetitions']:.4f}" for r in args.repeats)
        print(f"world_seed {w}: ridge, voxels {m['ridge, voxels']:.4f} | {reps} | ridge, noise-free voxels "
              f"{m['ridge, noise-free voxels']:.4f} | ridge, planted codes {m['ridge, planted codes']:.4f} | "
              f"training scenes {m['training scenes']:.0f} | test seconds with an unseen label set "
              f"{m['test seconds with an unseen label set']:.0%} (validation seconds: "
              f"{m['val seconds with an unseen label set']:.0%})")
        print(f"  per subject, voxels:     {' '.join(f'{v:.3f}' for v in m['per-subject voxels'])}")
        print(f"  per subject, noise-free: {' '.join(f'{v:.3f}' for v in m['per-subject noise-free'])}")
    print(f"rerun: OMP_NUM_THREADS=1 python benchmarks/volume_ceiling.py {args.recipe} "
          f"{' '.join(args.overrides)} --world-seeds {' '.join(map(str, args.world_seeds))} "
          f"--repeats {' '.join(map(str, args.repeats))}".replace("  ", " "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
