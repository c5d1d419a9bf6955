"""The per-voxel linear read-out of a volume recipe's shards: what any volume network should beat.

    OMP_NUM_THREADS=1 python benchmarks/volume_linear_readout.py recipes/synthetic_volume.yaml [key=value ...]

For every subject of every volume dataset: a multi-label logistic regression (full-batch Adam, the
same fit as the SRM baseline's classifier) on the subject's own in-mask voxels, z-scored with
training statistics; the weight decay is chosen on validation mAP from a small grid. Prints the test
mAP / AUC per subject and their mean, computed by the trainer's own ``metrics_from_predictions``.
Then the same read-out *pooled*: one logistic regression for all subjects on the dense grid (each
subject's z-scored voxels scattered at their grid positions, zeros elsewhere), as a network without
subject-specific parameters sees them: the gap between the two is what subject variability costs a
shared linear map.
This is a diagnostic for issue 14 (why the volume networks trail it), not a bench method: the
``linear`` / ``logistic`` rows of ``foundation bench`` are added separately.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def _pooled(index, cfg, recipe, decays, metrics_from_predictions, read_split, fit) -> tuple[float, float]:
    """Test (mAP, AUC), mean over subjects, of one logistic regression on every subject's dense grid."""
    subjects = list(cfg.subjects or index.data["subjects"])
    dense: dict[str, dict[str, tuple]] = {}
    for s in subjects:
        mask = index.mask(s).reshape(-1)
        data = {split: read_split(index, s, split) for split in ("train", "val", "test")}
        mean, std = data["train"].x.mean(0), data["train"].x.std(0) + 1e-6
        for split, d in data.items():
            keys, x, y = d.keys, d.x, d.y
            grid = np.zeros((len(x), mask.size), np.float32)
            grid[:, mask] = (x - mean) / std
            dense.setdefault(split, {})[s] = (keys, grid, y)

    def pred(clf, split: str, subs) -> dict[str, object]:
        keys, probs, labels, who = [], [], [], []
        for s in subs:
            k, x, y = dense[split][s]
            with torch.no_grad():
                probs.append(torch.sigmoid(clf(torch.from_numpy(x))).numpy())
            keys += k
            labels.append(y)
            who += [s] * len(k)
        return {"keys": keys, "subjects": who, "probs": np.concatenate(probs), "labels": np.concatenate(labels)}

    x_tr = np.concatenate([dense["train"][s][1] for s in subjects])
    y_tr = np.concatenate([dense["train"][s][2] for s in subjects])
    best = None
    for wd in decays:
        clf = fit(x_tr, y_tr, seed=recipe.seed, weight_decay=wd)
        val = metrics_from_predictions({cfg.id: pred(clf, "val", subjects)}, {cfg.id: index.info})["mAP"]
        if best is None or val > best[0]:
            best = (val, wd, clf)
    per = [metrics_from_predictions({cfg.id: pred(best[2], "test", [s])}, {cfg.id: index.info}) for s in subjects]
    print(f"{cfg.id}: pooled: weight_decay {best[1]:g} (val mAP {best[0]:.4f})")
    return float(np.mean([m["mAP"] for m in per])), float(np.mean([m["AUC"] for m in per]))


def main(argv: list[str] | None = None) -> int:
    from foundation.data.shards import build_shards, find_shards
    from foundation.core.recipe import load_recipe
    from foundation.data.splits import read_split
    from foundation.workflows.srm import _fit_logistic
    from foundation.objectives.scoring import metrics_from_predictions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--weight-decay", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    indices = find_shards(recipe) or build_shards(recipe, progress=False)
    torch.set_num_threads(1)
    means = []
    for cfg in recipe.datasets:
        index = indices[cfg.id]
        if index.info.kind != "volume":
            continue
        rows = []
        for s in cfg.subjects or index.data["subjects"]:
            data = {split: read_split(index, s, split) for split in ("train", "val", "test")}
            x_tr = data["train"].x
            mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6

            def z(split: str) -> np.ndarray:
                return ((data[split].x - mean) / std).astype(np.float32)

            def pred(clf: torch.nn.Linear, split: str) -> dict[str, object]:
                with torch.no_grad():
                    probs = torch.sigmoid(clf(torch.from_numpy(z(split)))).numpy()
                return {"keys": data[split].keys, "subjects": [s] * len(probs), "probs": probs,
                        "labels": data[split].y}

            best = None
            for wd in args.weight_decay:
                clf = _fit_logistic(z("train"), data["train"].y, seed=recipe.seed, weight_decay=wd)
                val = metrics_from_predictions({cfg.id: pred(clf, "val")}, {cfg.id: index.info})["mAP"]
                if best is None or val > best[0]:
                    best = (val, wd, clf)
            test = metrics_from_predictions({cfg.id: pred(best[2], "test")}, {cfg.id: index.info})
            rows.append((test["mAP"], test["AUC"]))
            print(f"{cfg.id}/{s}: voxels {x_tr.shape[1]}, train {len(x_tr)}, weight_decay {best[1]:g} "
                  f"(val mAP {best[0]:.4f}): test mAP {test['mAP']:.4f} AUC {test['AUC']:.4f} "
                  f"(chance mAP {test['chance_mAP']:.4f})")
        m = np.mean(rows, axis=0)
        means.append(m)
        print(f"{cfg.id}: per-subject logistic regression, mean over {len(rows)} subjects: test mAP {m[0]:.4f} "
              f"AUC {m[1]:.4f}")
        pooled = _pooled(index, cfg, recipe, args.weight_decay, metrics_from_predictions, read_split, _fit_logistic)
        print(f"{cfg.id}: pooled logistic regression on the dense grid (one for all subjects), mean over subjects: "
              f"test mAP {pooled[0]:.4f} AUC {pooled[1]:.4f}")
    if not means:
        print("no volume dataset in the recipe", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
