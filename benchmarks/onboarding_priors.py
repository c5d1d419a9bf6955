"""Can other subjects help fit a new subject's alignment from few samples? Linear probes (issue 13).

    .venv/bin/python benchmarks/onboarding_priors.py            # the world of recipes/synthetic.yaml, ~5 min

Each subject of the ROI world in turn is new; the other nine give the guidance basis, their own maps
and one pooled ridge read-out of the aligned space (exactly as ``token_capacity.py --onboarding``).
The new subject's map onto the shared guidance space is fitted from a fraction of its training samples
by each of these estimators, then read out by the others' read-out; test mAP, mean over held-out subjects:

* ``ridge``: ``model.alignment=guidance-ridge`` (backward ridge, alpha by GCV): the reference;
* ``encoding``: ``model.alignment=guidance-encoding`` (an inverted per-input ridge encoding model);
* ``reduced-rank r``: the ridge map truncated to its ``r`` leading output directions (fewer
  effective parameters);
* ``procrustes``: a template per ROI from the other subjects (generalised Procrustes over their
  ridge *encoding* matrices, guidance → ROI components), the new subject's ROI components rotated onto
  it by orthogonal Procrustes against the template's predictions of its samples, then one decoder
  pooled over the others' rotated data (hyperalignment through the shared stimulus space; handles
  sign flips, rotations and re-orderings of PCA components);
* ``ridge toward procrustes``: ridge shrinking the new map toward the ``procrustes`` map instead of
  toward zero (alpha by leave-one-out);
* ``ridge toward ROI signs``: the same, toward a map that only flips whole ROIs onto the template
  (it uses that this world's PCA ambiguity is a sign per ROI: an upper bound of what a prior of
  that kind can do here, not a method for real data, whose PCA bases also rotate).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from token_capacity import LAMBDAS, average_precision, load_world, ridge


def procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The orthogonal ``Q`` minimising ``||a Q − b||``; ``a``, ``b`` ``(n, D)``."""
    u, _, vt = np.linalg.svd(a.T @ b)
    return u @ vt


def encoding(g: np.ndarray, x: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Ridge encoding weights ``(T, D)`` from targets ``g`` ``(n, T)`` to inputs ``x`` ``(n, D)``."""
    gc, xc = g - g.mean(0), x - x.mean(0)
    return np.linalg.solve(gc.T @ gc + lam * np.eye(g.shape[1]), gc.T @ xc)


def ridge_toward(x: np.ndarray, y: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, W)`` minimising ``||y − (x − mean) W||² + a ||W − prior||²``, ``a`` by leave-one-out."""
    mu = x.mean(0)
    xc = x - mu
    resid = y - xc @ prior
    rc = resid - resid.mean(0)
    best = None
    for a in (0.1, 1, 10, 100, 1e3, 1e4, 1e5):
        h = xc @ np.linalg.solve(xc.T @ xc + a * np.eye(xc.shape[1]), xc.T)
        loo = ((rc - h @ rc) / (1 - np.diag(h))[:, None]) ** 2
        if best is None or loo.mean() < best[0]:
            best = (loo.mean(), a)
    delta = np.linalg.solve(xc.T @ xc + best[1] * np.eye(xc.shape[1]), xc.T @ rc)
    return mu, prior + delta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/synthetic.yaml")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 1.0])
    p.add_argument("--alignment-dim", type=int, default=32)
    args = p.parse_args(argv)

    from foundation.model.alignment import fit_guidance_encoding, fit_guidance_ridge, guidance_basis

    _, data = load_world(args.recipe)
    subjects = list(data)
    n_rois, dim = data[subjects[0]]["train"][0].shape[1:]

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    def rotate(x: np.ndarray, q: list[np.ndarray]) -> np.ndarray:
        return np.stack([x[:, r] @ q[r] for r in range(n_rois)], 1)

    scores: dict[str, dict[float, list[float]]] = {}
    joint = []
    for new in subjects:
        others = [s for s in subjects if s != new]
        k = args.alignment_dim
        (cl, pl) = guidance_basis(np.concatenate([data[s]["train"][2] for s in others]), k)
        (ch, ph) = guidance_basis(np.concatenate([data[s]["train"][3] for s in others]), k)
        g = {s: np.c_[(data[s]["train"][2] - cl) @ pl, (data[s]["train"][3] - ch) @ ph] for s in subjects}
        own = {s: fit_guidance_ridge(flat(data[s]["train"][0]), g[s])[:2] for s in others}
        best = None
        for lam in LAMBDAS:
            f = ridge(np.concatenate([(flat(data[s]["train"][0]) - own[s][0]) @ own[s][1] for s in others]),
                      np.concatenate([data[s]["train"][1] for s in others]), lam)
            val = np.mean([average_precision(data[s]["val"][1], f((flat(data[s]["val"][0]) - own[s][0]) @ own[s][1]))
                           for s in others])
            if best is None or val > best[0]:
                best = (val, f)
        readout = best[1]
        # the template: generalised Procrustes over the others' per-ROI encoding matrices
        enc = {s: [encoding(g[s], data[s]["train"][0][:, r]) for r in range(n_rois)] for s in others}
        template = [enc[others[0]][r] for r in range(n_rois)]
        rot = {}
        for _ in range(5):
            rot = {s: [procrustes(enc[s][r], template[r]) for r in range(n_rois)] for s in others}
            template = [np.mean([enc[s][r] @ rot[s][r] for s in others], 0) for r in range(n_rois)]
        dmean, dweight, _ = fit_guidance_ridge(
            np.concatenate([flat(rotate(data[s]["train"][0], rot[s])) for s in others]),
            np.concatenate([g[s] for s in others]))
        x_test, y_test = data[new]["test"][0], data[new]["test"][1]
        full = fit_guidance_ridge(flat(data[new]["train"][0]), g[new])
        joint.append(average_precision(y_test, readout((flat(x_test) - full[0]) @ full[1])))
        x = data[new]["train"][0]
        order = np.random.default_rng(0).permutation(len(x))
        for frac in args.fractions:
            sub = np.sort(order[: max(3, math.ceil(frac * len(x)))])
            xs, gs = x[sub], g[new][sub]
            maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            maps["ridge"] = fit_guidance_ridge(flat(xs), gs)[:2]
            maps["encoding"] = fit_guidance_encoding(flat(xs), gs)[:2]
            fitted = (flat(xs) - maps["ridge"][0]) @ maps["ridge"][1]
            _, _, vt = np.linalg.svd(fitted, full_matrices=False)
            for r in (8, 16):
                maps[f"reduced-rank {r}"] = (maps["ridge"][0], maps["ridge"][1] @ vt[:r].T @ vt[:r])
            gc = gs - gs.mean(0)
            q = [procrustes(xs[:, r] - xs[:, r].mean(0), gc @ template[r]) for r in range(n_rois)]
            signs = [np.sign(np.trace((xs[:, r] - xs[:, r].mean(0)).T @ (gc @ template[r]))) or 1.0
                     for r in range(n_rois)]
            for name, qq in (("procrustes", q), ("ROI signs", [s_ * np.eye(dim) for s_ in signs])):
                prior = np.concatenate([qq[r] @ dweight[r * dim:(r + 1) * dim] for r in range(n_rois)])  # (F, T)
                if name == "procrustes":  # rotate, then the pooled decoder: (x_r Q_r − m_r) W_r per ROI
                    maps[name] = (np.concatenate([dmean[r * dim:(r + 1) * dim] @ qq[r].T for r in range(n_rois)]),
                                  prior)
                maps[f"ridge toward {name}"] = ridge_toward(flat(xs), gs, prior)
            for name, (mean, weight) in maps.items():
                scores.setdefault(name, {}).setdefault(frac, []).append(
                    average_precision(y_test, readout((flat(x_test) - mean) @ weight)))
    n_train = len(data[subjects[0]]["train"][0])
    j = float(np.mean(joint))
    print(f"{args.recipe}: each of {len(subjects)} subjects held out in turn; test mAP, mean over held-out subjects "
          f"(share of the joint {j:.3f}: the same read-out, the subject's ridge map from all its data)\n")
    print("| new subject's map | " + " | ".join(f"{f:.0%} ({max(3, math.ceil(f * n_train))})" for f in args.fractions)
          + " |")
    print("|---|" + "---|" * len(args.fractions))
    for name, by_frac in scores.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(by_frac[f]):.3f} ({np.mean(by_frac[f]) / j:.0%})"
                                         for f in args.fractions) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
