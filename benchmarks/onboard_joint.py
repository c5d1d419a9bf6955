"""Onboarding a subject to a jointly aligned volume model: its map fitted against the pool's shared map, or alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onboard_joint.py RECIPE [key=value ...] [--fractions 0.1 0.25 0.5 1] [--seeds 0 1 2]

A benchmark, not a test: closed-form fits only (no network), on the recipe's existing shards (build them
first: ``foundation shard RECIPE``).  For every subject ``h`` of the recipe's first volume dataset, in turn
the newcomer:

* the *pool* is every other subject, pre-trained as ``model.alignment: guidance-ridge-joint`` pre-trains it:
  the guidance basis from the pool's training stimuli, every pool subject's map fitted jointly on its whole
  training split (share ``model.alignment_share``, alpha by cross-validation over stimuli), then one ridge
  read-out of the pool's aligned training tokens (alpha on the pool's validation mAP).  The read-out stays
  frozen, as ``foundation finetune`` keeps the backbone;
* the newcomer brings a random fraction ``f`` of its training samples (``--seeds`` draw the subsets) and
  gets, scored on its test split:

  - ``own ridge``: one ridge read-out of its voxels, alpha on its validation split (the per-subject yardstick);
  - ``alone -> pool``: its map fitted from its own samples (``guidance-ridge``), the pool's read-out (what
    ``foundation finetune`` gave a newcomer of a joint model before the shared map was kept);
  - ``shared, c = 1 -> pool``: its map fitted against the pool's shared map under the pool's own objective
    (scale 1, the pool's alpha), the pool's read-out;
  - ``shared -> pool``: its map fitted against the pool's shared map with the scale ``c`` and alpha chosen by
    cross-validation over its own training stimuli
    (:func:`foundation.model.alignment_joint.fit_guidance_ridge_to_shared`), the pool's read-out (what
    ``foundation finetune`` does now).

Per fraction: mean test mAP over (newcomer, seed) and paired t-tests of ``shared -> pool`` against the other
two (Holm over all comparisons printed).  Nothing is chosen here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def _mAP(probabilities: np.ndarray, y: np.ndarray) -> float:
    from foundation.objectives.metrics import multilabel_metrics

    return float(multilabel_metrics(torch.from_numpy(probabilities).float(), torch.from_numpy(y).int())["mAP"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)

    from foundation.core.recipe import load_recipe
    from foundation.data.shards import find_shards
    from foundation.data.splits import read_split
    from foundation.model.alignment import fit_guidance_ridge, guidance_bases, guidance_targets
    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared, fit_joint_and_shared
    from foundation.objectives.stats import holm, paired_ttest
    from foundation.workflows.linear import fit_pooled_readout, fit_subject

    recipe = load_recipe(args.recipe, args.overrides)
    indices = find_shards(recipe)
    if indices is None:
        raise SystemExit(f"{args.recipe}: shards not built; run `foundation shard {args.recipe}` first")
    cfg = next((c for c in recipe.datasets if indices[c.id].info.kind == "volume"), None)
    if cfg is None:
        raise SystemExit(f"{args.recipe}: no volume dataset (the joint alignment shares maps through the voxel grid)")
    index = indices[cfg.id]
    subjects = list(index.data["subjects"])
    k, share = recipe.model.alignment_dim, recipe.model.alignment_share
    data = {s: {split: read_split(index, s, split) for split in ("train", "val", "test")} for s in subjects}
    positions = {s: index.voxel_positions(s) for s in subjects}
    print(f"{args.recipe} {' '.join(args.overrides)}: dataset {cfg.id}, {len(subjects)} subjects, training samples "
          f"{[len(data[s]['train']) for s in subjects]}, alignment_dim {k}, share {share:g}", flush=True)

    scores: dict[tuple[str, float], dict[tuple[str, int], float]] = {}
    chosen: dict[float, list[float]] = {}
    t0 = time.time()
    for h in subjects:
        pool = [s for s in subjects if s != h]
        seen = {}
        for s in pool:
            tr = data[s]["train"]
            for i, st in enumerate(tr.stimuli):
                seen.setdefault(st, (tr.low[i], tr.high[i]))
        bases = guidance_bases(seen, min(k, tr.low.shape[1], tr.high.shape[1]))
        trains = [data[s]["train"] for s in pool]
        fits, shared = fit_joint_and_shared([t.x for t in trains], [positions[s] for s in pool],
                                            [guidance_targets(t.low, t.high, bases) for t in trains], share=share,
                                            stimuli=[t.stimuli for t in trains])
        maps = dict(zip(pool, ((m, w) for m, w, _ in fits)))
        z = np.concatenate([(data[s]["train"].x - maps[s][0]) @ maps[s][1] for s in pool])
        y = np.concatenate([data[s]["train"].y for s in pool])
        _, _, readout = fit_pooled_readout(z, y, [((data[s]["val"].x - maps[s][0]) @ maps[s][1], data[s]["val"].y)
                                                  for s in pool], solver="ridge")
        full = data[h]["train"]
        for f in args.fractions:
            for seed in (args.seeds if f < 1.0 else args.seeds[:1]):
                n = max(3, int(round(f * len(full))))
                rows = np.sort(np.random.default_rng(seed).choice(len(full), n, replace=False))
                tr = full.subset({full.keys[i] for i in rows})
                targets = guidance_targets(tr.low, tr.high, bases)
                test, val = data[h]["test"], data[h]["val"]
                got = {}
                _, _, own = fit_subject(tr, val, solver="ridge")
                got["own ridge"] = _mAP(own(test.x), test.y)
                m, w, _ = fit_guidance_ridge(tr.x, targets)
                got["alone -> pool"] = _mAP(readout((test.x - m) @ w), test.y)
                m, w, _ = fit_guidance_ridge_to_shared(tr.x, positions[h], targets, shared, scales=(1.0,), alphas=None)
                got["shared c=1 -> pool"] = _mAP(readout((test.x - m) @ w), test.y)
                m, w, info = fit_guidance_ridge_to_shared(tr.x, positions[h], targets, shared, stimuli=tr.stimuli)
                got["shared -> pool"] = _mAP(readout((test.x - m) @ w), test.y)
                chosen.setdefault(f, []).append(info["shared_scale"])
                for method, v in got.items():
                    scores.setdefault((method, f), {})[(h, seed)] = v
                print(f"  newcomer {h} f={f:g} seed {seed} n={n}: " + ", ".join(f"{a} {v:.4f}" for a, v in got.items())
                      + f"  ({time.time() - t0:.0f} s)", flush=True)

    print()
    print("| newcomer's training samples | own ridge | alone → pool | shared, c = 1 → pool | shared → pool (c chosen) | "
          "shared → pool − own ridge | shared → pool − alone → pool | c chosen (mean) | pairs |")
    print("|---|---|---|---|---|---|---|---|---|")
    tests, lines = [], []
    for f in args.fractions:
        keys = sorted(scores[("own ridge", f)])
        col = {m: np.array([scores[(m, f)][key] for key in keys])
               for m in ("own ridge", "alone -> pool", "shared c=1 -> pool", "shared -> pool")}
        row = []
        for ref in ("own ridge", "alone -> pool"):
            _, pv = paired_ttest(col["shared -> pool"], col[ref])
            tests.append(pv)
            row.append((float(np.mean(col["shared -> pool"] - col[ref])), pv, int(np.sum(col["shared -> pool"] > col[ref]))))
        lines.append((f, col, row, len(keys)))
    adjusted = holm(tests)
    for i, (f, col, row, n) in enumerate(lines):
        cells = [f"{d:+.4f} (Holm p = {adjusted[2 * i + j]:.2g}; better on {b} of {n})" for j, (d, _, b) in enumerate(row)]
        print(f"| {100 * f:g} % | {col['own ridge'].mean():.4f} | {col['alone -> pool'].mean():.4f} | "
              f"{col['shared c=1 -> pool'].mean():.4f} | {col['shared -> pool'].mean():.4f} | {cells[0]} | {cells[1]} | "
              f"{np.mean(chosen[f]):.2f} | {n} |")
    print(f"\nmAP: the newcomer's test mAP, mean over newcomers × seeds (f = 1: one draw); pairs: (newcomer, seed).")
    print(f"rerun: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onboard_joint.py {args.recipe} {' '.join(args.overrides)} "
          f"--fractions {' '.join(f'{f:g}' for f in args.fractions)} --seeds {' '.join(map(str, args.seeds))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
