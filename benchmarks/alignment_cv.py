"""Benchmark (not a test): the per-subject alignment's alpha by leave-one-out vs by folds over stimuli (RESULTS §4q).

Why asked: ``guidance-ridge`` chooses each subject's ridge alpha by scikit-learn's efficient leave-one-out on an
absolute grid (``RIDGE_ALPHAS``), while the joint alignment (``foundation.model.alignment_joint``) chooses its alpha
by 5-fold cross-validation over contiguous blocks of the sorted stimulus ids, on a grid relative to the kernel's
mean diagonal, because on a movie a left-out second has its neighbours in time (same scene, smoothed response) in
the training folds and leave-one-out is optimistic there.  Does the per-subject fit lose by it?

What it does, per world seed, with no training: reads the recipe's shards (built if missing), fits every subject's
``guidance-ridge`` map twice — as shipped (``fit_guidance_ridge``) and by the joint fitter for that one subject with
no shared map (``fit_guidance_ridge_joint``, ``share=0``: the same ridge, with its stimulus folds and its grid
relative to the kernel's mean diagonal, ``JOINT_ALPHAS``) — and for each the bench's
``aligned-ridge`` read-out (``fit_pooled_readout``: one ridge pooled over the aligned subjects, alpha on the
subject-mean validation mAP), scored per subject on test.  Prints per world the two subject-mean test mAPs and the
alphas divided by the subject's input count (the standardised kernel's mean diagonal), then the paired comparison
over every subject of every world. ::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment_cv.py recipes/synthetic_volume.yaml --world-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def world(recipe_file: str, overrides: list[str]) -> dict[str, dict[str, float]]:
    """``{"shipped" | "folds": {subject: test mAP, "alpha:<subject>": alpha}}`` of one world."""
    from foundation.core.recipe import load_recipe
    from foundation.model.alignment import fit_guidance_ridge, guidance_bases, guidance_targets
    from foundation.model.alignment_joint import fit_guidance_ridge_joint
    from foundation.objectives.metrics import multilabel_metrics
    from foundation.workflows.closed_form import prepare_run
    from foundation.workflows.linear import _subject_splits, fit_pooled_readout

    import torch

    recipe = load_recipe(recipe_file, overrides)
    with prepare_run(recipe, progress=False) as (_, indices):
        cfg = recipe.datasets[0]
        index = indices[cfg.id]
        subjects = list(cfg.subjects or index.data["subjects"])
        data = {s: _subject_splits(index, cfg, s, what="aligned ridge") for s in subjects}
    seen = {}
    for parts in data.values():
        for i, stimulus in enumerate(parts["train"].stimuli):
            seen.setdefault(stimulus, (parts["train"].low[i], parts["train"].high[i]))
    first = data[subjects[0]]["train"]
    bases = guidance_bases(seen, min(recipe.model.alignment_dim, first.low.shape[1], first.high.shape[1]))
    out: dict[str, dict[str, float]] = {}
    for how in ("shipped", "folds"):
        maps, row = {}, {}
        for s in subjects:
            train = data[s]["train"]
            targets = guidance_targets(train.low, train.high, bases)
            width = train.x.shape[1]
            if how == "shipped":
                mean, weight, info = fit_guidance_ridge(train.x, targets)
                row[f"alpha:{s}"] = info["alpha"] / width  # standardised inputs: the kernel's mean diagonal is F
            else:  # the joint fitter for one subject with no shared map (share 0): its folds and relative grid
                ((mean, weight, info),) = fit_guidance_ridge_joint([train.x], [np.arange(width)], [targets],
                                                                   share=0.0, stimuli=[list(train.stimuli)])
                row[f"alpha:{s}"] = info["alpha"]
            maps[s] = (mean, weight)
        z = np.concatenate([(data[s]["train"].x - maps[s][0]) @ maps[s][1] for s in subjects])
        y = np.concatenate([data[s]["train"].y for s in subjects])
        val = [((data[s]["val"].x - maps[s][0]) @ maps[s][1], data[s]["val"].y) for s in subjects]
        _, _, predict = fit_pooled_readout(z, y, val, solver="ridge", seed=recipe.seed)
        for s in subjects:
            test = data[s]["test"]
            probs = predict((test.x - maps[s][0]) @ maps[s][1])
            row[s] = multilabel_metrics(torch.from_numpy(probs).float(), torch.from_numpy(test.y).int())["mAP"]
        out[how] = row
    return out


def main(argv: list[str] | None = None) -> int:
    from _runs import paired_summary

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--world-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs", type=Path, default=Path("runs/alignment-cv"), help="where the (empty) run folders go")
    a = p.parse_args(argv)
    pairs = []
    for w in a.world_seeds:
        got = world(a.recipe, [*a.overrides, f"datasets.0.options.world_seed={w}", f"run.dir={a.runs / f'world{w}'}"])
        subjects = [k for k in got["shipped"] if not k.startswith("alpha:")]
        pairs += [(got["folds"][s], got["shipped"][s]) for s in subjects]
        mean = {how: np.mean([got[how][s] for s in subjects]) for how in got}
        alphas = {how: " ".join(f"{got[how][f'alpha:{s}']:.3g}" for s in subjects) for how in got}
        print(f"world {w}: test mAP leave-one-out (shipped) {mean['shipped']:.4f}, stimulus folds {mean['folds']:.4f} "
              f"({mean['folds'] - mean['shipped']:+.4f}); alphas / voxels shipped {alphas['shipped']} | folds "
              f"{alphas['folds']}",
              flush=True)
    print(f"stimulus folds vs leave-one-out, every subject of every world: {paired_summary(pairs, 'subject')}")
    print(f"rerun: {Path(sys.executable).name} {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
