"""Per-subject ridge blended with the pooled aligned ridge, the weight chosen on validation (issue 14, diagnosis).

    OMP_NUM_THREADS=1 python benchmarks/volume_blend.py recipes/synthetic_volume.yaml --world-seeds 0 1 2

For each world: the ``ridge`` bench row (one read-out per subject) and the ``aligned-ridge`` row (one
read-out over all subjects' inputs aligned by ``guidance-ridge``) are fitted as the bench fits them; each
subject's prediction is ``a · pooled + (1 − a) · own`` for ``a`` in ``--weights``, and ``a`` is chosen on
the mean over subjects of the validation mAP — the least a user pooling linearly could do to keep the
per-subject read-out's score where pooling does not pay. Prints validation and test mAP (mean over
subjects) per weight, then the chosen weight's test mAP against ``a = 0`` (the per-subject ridge), paired
over subjects (two-sided t-test). Builds the recipe's shards for each world if they are not there.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch
    from scipy.stats import ttest_rel

    from foundation.core.recipe import load_recipe
    from foundation.data.shards import build_shards, find_shards
    from foundation.objectives.metrics import multilabel_metrics
    from foundation.workflows.linear import _subject_splits, fit_pooled_aligned, fit_subject

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--world-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--alignment", default="guidance-ridge")
    args = p.parse_args(argv)
    if 0.0 not in args.weights:
        p.error("--weights must include 0 (the per-subject ridge, the reference)")
    torch.set_num_threads(1)

    def score(probs: np.ndarray, labels: np.ndarray) -> float:
        return float(multilabel_metrics(torch.from_numpy(probs).float(), torch.from_numpy(labels).int())["mAP"])

    for w in args.world_seeds:
        recipe = load_recipe(args.recipe, [*args.overrides, f"datasets.0.options.world_seed={w}"])
        indices = find_shards(recipe) or build_shards(recipe, progress=False)
        cfg = recipe.datasets[0]
        index = indices[cfg.id]
        subjects = list(cfg.subjects or index.data["subjects"])
        data = {s: _subject_splits(index, cfg, s, what="blend") for s in subjects}
        own = {s: fit_subject(data[s]["train"], data[s]["val"], solver="ridge")[2] for s in subjects}
        pooled, _ = fit_pooled_aligned(data, alignment=args.alignment, solver="ridge", dim=recipe.model.alignment_dim)
        # each read-out predicts each split once; only the blend changes with the weight
        preds = {(s, split): (pooled[s](data[s][split].x), own[s](data[s][split].x))
                 for s in subjects for split in ("val", "test")}
        res = {(a, split): [score(a * preds[s, split][0] + (1 - a) * preds[s, split][1], data[s][split].y)
                            for s in subjects]
               for a in args.weights for split in ("val", "test")}
        chosen = max(args.weights, key=lambda a: np.mean(res[a, "val"]))
        diff = np.array(res[chosen, "test"]) - np.array(res[0.0, "test"])
        p_value = ttest_rel(res[chosen, "test"], res[0.0, "test"]).pvalue if chosen != 0.0 else float("nan")
        print(f"world_seed {w}: " + " | ".join(f"a={a:g}: val {np.mean(res[a, 'val']):.4f} test "
                                               f"{np.mean(res[a, 'test']):.4f}" for a in args.weights))
        print(f"  chosen on validation a={chosen:g}: test {np.mean(res[chosen, 'test']):.4f} vs per-subject ridge "
              f"{np.mean(res[0.0, 'test']):.4f}: diff {diff.mean():+.4f}, better on {(diff > 0).sum()} of "
              f"{len(diff)} subjects, paired t p = {p_value:.2g}")
    print(f"rerun: OMP_NUM_THREADS=1 python benchmarks/volume_blend.py {' '.join([args.recipe, *args.overrides])} "
          f"--world-seeds {' '.join(map(str, args.world_seeds))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
