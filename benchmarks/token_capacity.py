"""Why subject tokens cannot carry a subject on the ROI world: linear probes (docs/RESULTS.md, issue 13).

    .venv/bin/python benchmarks/token_capacity.py        # the world of recipes/synthetic.yaml, ~1 min

Each row trains *linear* read-outs (ridge regression onto the 0/1 labels, λ chosen on the validation
splits, scored on the shared test stimuli; mean over subjects of each subject's test mAP) on one
representation of the subjects' ROI tokens, either one model per subject or one model pooled over all
ten subjects:

* ``raw``: the tokens as the model gets them (each subject's own code: ROI signs from PCA, places on
  the low→high hierarchy, gains and partly own maps).
* ``raw + subject one-hot``: pooled, with a one-hot subject code appended to the input: the most a
  subject token can do *additively* to a linear read-out (shift it per subject).
* ``oracle signs``: each subject's ROI tokens multiplied by that ROI's planted sign (read from the
  generator): what undoing only the PCA sign ambiguity gives.
* ``aligned``: each subject's tokens through its ``model.alignment=guidance-ridge`` map
  (``foundation.model.alignment``: ridge from the subject's own training samples onto the guidance
  space, the basis from all training stimuli), i.e. a per-subject *linear map* instead of a token; and
  through its ``guidance-encoding`` map (an inverted encoding model onto the same space).

If pooling ``raw`` loses much against per-subject models while the one-hot does not help and a
per-subject linear map recovers it, the subject differences are per-subject linear codes of the input,
which one shared embedding plus additive tokens cannot represent.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(np.mean([average_precision_score(y[:, c], s[:, c]) for c in range(y.shape[1]) if y[:, c].any()]))


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> Callable[[np.ndarray], np.ndarray]:
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - ym))
    return lambda z: (z - xm) @ w + ym


def load_world(recipe_path: str) -> tuple[object, dict[str, dict[str, tuple[np.ndarray, ...]]]]:
    """The ROI world of a recipe's synthetic dataset, generated in memory (no shards).

    Returns ``(options, data)``: ``data[subject][split] = (fmri (n, R, D), labels (n, C), low, high)``
    for the splits ``train``, ``val`` and ``test``, in the subject order of the world.
    """
    from foundation_synthetic.world import SyntheticOptions, World

    from foundation.core.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    ds = next(d for d in recipe.datasets if d.plugin == "synthetic")
    o = SyntheticOptions(**{k: tuple(v) if k in ("grid", "voxels_per_roi") else v for k, v in ds.options.items()})
    world = World(o)
    st = world.stimuli
    data = {}
    for s in world.subjects:
        d = world.subject(s)
        split = np.array(d.splits)
        data[s] = {k: (d.fmri[split == k].astype(np.float64), st.labels[d.stimulus_rows[split == k]].astype(float),
                       st.low[d.stimulus_rows[split == k]], st.high[d.stimulus_rows[split == k]])
                   for k in ("train", "val", "test")}
    return o, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/synthetic.yaml")
    p.add_argument("--alignment-dim", type=int, default=32)
    p.add_argument("--onboarding", action="store_true",
                   help="also: a new subject from a fraction of its data, each subject held out in turn")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.25, 1.0])
    args = p.parse_args(argv)

    from foundation_synthetic.world import _rng

    from foundation.model.alignment import fit_guidance_encoding, fit_guidance_ridge, guidance_basis

    o, data = load_world(args.recipe)
    subjects = tuple(data)
    signs = {}
    for s in subjects:
        # the generator's draws for this subject, in its order: level, gain, then the sign of each ROI
        r = _rng(o.world_seed, "subject", s)
        r.normal(0, 0.8, o.n_rois)
        r.normal(0, 0.8, o.n_rois)
        signs[s] = np.where(r.random(o.n_rois) < 0.5 * min(o.subject_variability, 1.0), -1.0, 1.0)

    # the framework's alignment: basis from every subject's training stimuli, one ridge map per subject
    lows = np.concatenate([data[s]["train"][2] for s in subjects])
    highs = np.concatenate([data[s]["train"][3] for s in subjects])
    k = min(args.alignment_dim, lows.shape[1], highs.shape[1])
    (cl, pl), (ch, ph) = guidance_basis(lows, k), guidance_basis(highs, k)
    maps, enc_maps = {}, {}
    for s in subjects:
        x, _, lo, hi = data[s]["train"]
        mean, weight, _ = fit_guidance_ridge(x.reshape(len(x), -1), np.c_[(lo - cl) @ pl, (hi - ch) @ ph])
        maps[s] = (mean, weight)
        mean, weight, _ = fit_guidance_encoding(x.reshape(len(x), -1), np.c_[(lo - cl) @ pl, (hi - ch) @ ph])
        enc_maps[s] = (mean, weight)

    def flat(s: str, k: str) -> np.ndarray:
        x = data[s][k][0]
        return x.reshape(len(x), -1)

    features: dict[str, Callable[[str, str], np.ndarray]] = {
        "raw": flat,
        "raw + subject one-hot": lambda s, k: np.c_[flat(s, k), np.tile(10 * np.eye(len(subjects))[subjects.index(s)],
                                                                        (len(data[s][k][0]), 1))],
        "oracle signs": lambda s, k: (data[s][k][0] * signs[s][None, :, None]).reshape(len(data[s][k][0]), -1),
        "aligned (guidance-ridge)": lambda s, k: (flat(s, k) - maps[s][0]) @ maps[s][1],
        "aligned (guidance-encoding)": lambda s, k: (flat(s, k) - enc_maps[s][0]) @ enc_maps[s][1],
    }

    def evaluate(feat, pooled: bool) -> tuple[float, float]:
        best = None
        for lam in LAMBDAS:
            if pooled:
                f = ridge(np.concatenate([feat(s, "train") for s in subjects]),
                          np.concatenate([data[s]["train"][1] for s in subjects]), lam)
                fits = {s: f for s in subjects}
            else:
                fits = {s: ridge(feat(s, "train"), data[s]["train"][1], lam) for s in subjects}
            val = np.mean([average_precision(data[s]["val"][1], fits[s](feat(s, "val"))) for s in subjects])
            test = np.mean([average_precision(data[s]["test"][1], fits[s](feat(s, "test"))) for s in subjects])
            if best is None or val > best[0]:
                best = (val, lam, test)
        return best[1], best[2]

    print(f"{args.recipe}: {len(subjects)} subjects, {o.n_rois} ROI tokens × {o.token_dim}, "
          f"{len(data[subjects[0]]['train'][0])} training samples per subject; {sum(signs[s].sum() < o.n_rois for s in subjects)} "
          f"subjects with ≥ 1 mirrored ROI ({int(sum((signs[s] < 0).sum() for s in subjects))} of "
          f"{len(subjects) * o.n_rois} ROIs)\n")
    print("| input | per-subject ridge | pooled ridge (one model) |")
    print("|---|---|---|")
    for name, feat in features.items():
        cells = []
        for pooled in (False, True):
            if name == "raw + subject one-hot" and not pooled:
                cells.append("–")
                continue
            lam, test = evaluate(feat, pooled)
            cells.append(f"{test:.3f} (λ = {lam:g})")
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)
    print("\ntest mAP, mean over subjects of each subject's shared-test mAP; λ chosen on the mean validation mAP.")
    if args.onboarding:
        onboarding(data, subjects, args.fractions, k)
    return 0


def onboarding(data: dict, subjects: tuple[str, ...], fractions: list[float], k: int) -> None:
    """Linear-probe onboarding: each subject in turn is new; the others make the shared space and read-out.

    * scratch: the new subject's own ridge read-out on its fraction (λ on its validation split);
    * aligned (FITTER): the new subject's alignment (each of :data:`foundation.model.alignment.FITTERS`)
      fitted on its fraction (basis from the others' training stimuli), then the ridge read-out pooled over
      the other subjects' data aligned by the same fitter, unchanged;
    * joint (FITTER): the same pooled read-out fitted with the subject's full training data among the others'.
    """
    import math

    from foundation.model.alignment import FITTERS, guidance_basis

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    rows: dict[str, dict[float, list[float]]] = {"scratch": {}, **{name: {} for name in FITTERS}}
    joint: dict[str, list[float]] = {name: [] for name in FITTERS}
    for new in subjects:
        others = [s for s in subjects if s != new]
        lows = np.concatenate([data[s]["train"][2] for s in others])
        highs = np.concatenate([data[s]["train"][3] for s in others])
        (cl, pl), (ch, ph) = guidance_basis(lows, k), guidance_basis(highs, k)

        def targets(lo, hi):
            return np.c_[(lo - cl) @ pl, (hi - ch) @ ph]

        def align(fitter, s, rows_=None):
            x, _, lo, hi = data[s]["train"]
            idx = np.arange(len(x)) if rows_ is None else rows_
            mean, weight, _ = fitter(flat(x[idx]), targets(lo[idx], hi[idx]))
            return lambda z: (flat(z) - mean) @ weight

        def pooled_readout(members: dict):
            best = None
            for lam in LAMBDAS:
                f = ridge(np.concatenate([members[s](data[s]["train"][0]) for s in members]),
                          np.concatenate([data[s]["train"][1] for s in members]), lam)
                val = np.mean([average_precision(data[s]["val"][1], f(members[s](data[s]["val"][0]))) for s in others])
                if best is None or val > best[0]:
                    best = (val, f)
            return best[1]

        x, y = data[new]["train"][0], data[new]["train"][1]
        order = np.random.default_rng(0).permutation(len(x))
        subsets = {frac: np.sort(order[: max(3, math.ceil(frac * len(x)))]) for frac in fractions}
        for name, fitter in FITTERS.items():
            maps = {s: align(fitter, s) for s in others}
            readout = pooled_readout(maps)
            full = pooled_readout({**maps, new: align(fitter, new)})
            joint[name].append(average_precision(data[new]["test"][1], full(align(fitter, new)(data[new]["test"][0]))))
            for frac, sub in subsets.items():
                a = align(fitter, new, sub)
                rows[name].setdefault(frac, []).append(
                    average_precision(data[new]["test"][1], readout(a(data[new]["test"][0]))))
        for frac, sub in subsets.items():
            best = None
            for lam in LAMBDAS:
                f = ridge(flat(x[sub]), y[sub], lam)
                val = average_precision(data[new]["val"][1], f(flat(data[new]["val"][0])))
                if best is None or val > best[0]:
                    best = (val, average_precision(data[new]["test"][1], f(flat(data[new]["test"][0]))))
            rows["scratch"].setdefault(frac, []).append(best[1])
    n_train = len(data[subjects[0]]["train"][0])
    print(f"\nOnboarding (linear probes), each of the {len(subjects)} subjects held out in turn; test mAP mean ± std "
          f"over held-out subjects. joint = the pooled read-out fitted with the subject's full data: "
          + "; ".join(f"{name} {np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" for name, v in joint.items()) + "\n")
    print("| new subject's training data | " + " | ".join(
        f"{f:.0%} ({max(3, math.ceil(f * n_train))})" for f in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    print("| scratch: own ridge read-out | " + " | ".join(
        f"{np.mean(rows['scratch'][f]):.3f} ± {np.std(rows['scratch'][f], ddof=1):.3f}" for f in fractions) + " |")
    for name in FITTERS:
        print(f"| {name}: own map + the others' read-out | " + " | ".join(
            f"{np.mean(rows[name][f]):.3f} ± {np.std(rows[name][f], ddof=1):.3f}" for f in fractions) + " |")
        print(f"| {name} / its joint | " + " | ".join(f"{np.mean(rows[name][f]) / np.mean(joint[name]):.0%}"
                                                    for f in fractions) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
