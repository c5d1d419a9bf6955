"""How much the synthetic ROI world's planted guidance codes know beyond the labels (docs/RESULTS.md, §1).

    .venv/bin/python benchmarks/synthetic_codes.py            # the world of recipes/synthetic.yaml, < 10 s

Prints, over all stimuli of the world: the correlations between the representational similarity
matrices (cosine, upper triangle) of the planted low-level code, the high-level code and the label
vectors; and the test mAP of a ridge regression (λ = 1, 75/25 split) from each code to the labels.
If a code predicts the labels almost perfectly, the BCE loss already carries what an RSA loss on that
code would add.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def cosine_rsm(x: np.ndarray) -> np.ndarray:
    """``(N, N)`` cosine similarity of the rows of ``x`` ``(N, D)`` after centring each row."""
    x = x - x.mean(1, keepdims=True)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    return x @ x.T


def ridge_map(x: np.ndarray, y: np.ndarray, *, lam: float = 1.0, seed: int = 0) -> float:
    """Test mAP of a ridge regression ``x → y`` on a 75/25 split (labels absent from the test part skipped)."""
    from sklearn.metrics import average_precision_score

    n = len(x)
    idx = np.random.default_rng(seed).permutation(n)
    tr, te = idx[: n * 3 // 4], idx[n * 3 // 4:]
    xb = np.c_[x, np.ones(n)]
    w = np.linalg.solve(xb[tr].T @ xb[tr] + lam * np.eye(xb.shape[1]), xb[tr].T @ y[tr])
    pred = xb[te] @ w
    return float(np.mean([average_precision_score(y[te][:, c], pred[:, c])
                          for c in range(y.shape[1]) if y[te][:, c].any()]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/synthetic.yaml")
    args = p.parse_args(argv)

    from foundation_synthetic.world import SyntheticOptions, World

    from foundation.core.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    ds = next(d for d in recipe.datasets if d.plugin == "synthetic")
    options = dict(ds.options)
    for key in ("grid", "voxels_per_roi"):
        if key in options:
            options[key] = tuple(options[key])
    st = World(SyntheticOptions(**options)).stimuli
    low, high, labels = st.low.astype(np.float64), st.high.astype(np.float64), st.labels.astype(np.float64)
    iu = np.triu_indices(len(labels), 1)
    rsm = {name: cosine_rsm(v)[iu] for name, v in (("low", low), ("high", high), ("labels", labels))}
    print(f"{args.recipe}: {len(labels)} stimuli, {labels.shape[1]} labels")
    for a, b in (("low", "high"), ("low", "labels"), ("high", "labels")):
        print(f"  corr(RSM {a}, RSM {b}) = {np.corrcoef(rsm[a], rsm[b])[0, 1]:.3f}")
    for name, code in (("low", low), ("high", high)):
        print(f"  ridge mAP, planted {name} code → labels: {ridge_map(code, st.labels):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
