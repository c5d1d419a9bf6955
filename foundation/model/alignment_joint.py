"""Volume alignments fitted *jointly* over subjects: a map shared in the voxel grid plus each subject's own.

Why: :func:`~foundation.model.alignment.fit_guidance_ridge` fits every subject's map from that subject's
samples alone, so pooling subjects buys nothing at the input: each map is as noisy as its own few hundred
samples make it.  Volume datasets in a template space (HCP in MNI) give what ROI/PCA inputs do not — the
same voxel means the same place in every subject — and the maps that decode a category there are partly
common to subjects (category-selective regions sit at similar template coordinates) and partly individual.
This fitter lets the data share that common part (the feature augmentation of Daumé 2007, in kernel form)::

    w_s = g · w_0 + v_s          one ridge over every subject's samples, ‖w_0‖² and ‖v_s‖² penalised alike
    k((x, s), (x', s')) = x·x' · (g + [s = s'])          (inputs standardised per subject and voxel)

``g`` (``model.alignment_share``) is the prior weight of the shared map against each subject's own: ``0``
is the per-subject ridge, a large ``g`` one pooled map; the default ``1`` weighs them alike.  ``x·x'`` of two
subjects runs over the voxels both masks hold.  The ridge ``alpha`` is chosen by exact leave-one-out error
over a grid relative to the kernel's mean diagonal (as ``RidgeCV``'s GCV does per subject), on training
samples only.  The result is one ordinary ``(mean (V_s,), weight (V_s, T))`` map per subject, installed in
:class:`~foundation.model.alignment.SubjectAlignment` like any other, so the model and its forward are
unchanged.  Cost: the ``(N, N)`` kernel of all ``N`` training samples of the dataset (float64: 32 MB at
N = 2 000, 3.2 GB at 20 000) and one eigendecomposition of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["JOINT_ALPHAS", "fit_guidance_ridge_joint"]

#: ``alpha`` grid, as multiples of the mixed kernel's mean diagonal
JOINT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))


def fit_guidance_ridge_joint(xs: Sequence[np.ndarray], positions: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                             *, share: float = 1.0, alphas: Sequence[float] = JOINT_ALPHAS,
                             ) -> list[tuple[np.ndarray, np.ndarray, dict[str, float]]]:
    """Ridge maps of every subject of one volume dataset onto the guidance targets, fitted together.

    Args:
        xs: per subject ``(n_s, V_s)`` training inputs (its in-mask voxels).
        positions: per subject ``(V_s,)`` int flat grid positions of those voxels (strictly increasing).
        targets: per subject ``(n_s, T)`` shared-space targets of the same samples.
        share: ``g ≥ 0``, the prior weight of the map shared in the grid (0: per-subject ridge).
        alphas: the ``alpha`` grid, relative to the mixed kernel's mean diagonal.

    Returns:
        per subject ``(mean (V_s,), weight (V_s, T), info)`` with ``(x − mean) @ weight`` its aligned
        tokens; ``info`` holds the chosen ``alpha`` (relative), ``share`` and the leave-one-out error.
    """
    if not (len(xs) == len(positions) == len(targets)) or not xs:
        raise ValueError(f"one input, position and target array per subject: got {len(xs)}, {len(positions)}, "
                         f"{len(targets)}")
    if share < 0 or not np.isfinite(share):
        raise ValueError(f"share must be a finite number ≥ 0, got {share}")
    zs, means, stds = [], [], []
    for s, (x, pos, t) in enumerate(zip(xs, positions, targets)):
        if x.ndim != 2 or x.shape[1] != len(pos) or len(t) != len(x):
            raise ValueError(f"subject {s}: inputs {x.shape}, {len(pos)} positions, {len(t)} targets do not match")
        if len(x) < 3:
            raise ValueError(f"an alignment needs at least 3 training samples, got {len(x)} (subject {s})")
        if len(pos) > 1 and np.any(np.diff(pos) <= 0):
            raise ValueError(f"subject {s}: voxel positions must be strictly increasing")
        mean, std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64) + 1e-6
        zs.append(((x - mean) / std).astype(np.float32))
        means.append(mean)
        stds.append(std)
    sizes = [len(z) for z in zs]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    # the mixed kernel, block by block over pairs of subjects (voxels both masks hold)
    kernel = np.empty((n, n))
    for a in range(len(zs)):
        for b in range(a, len(zs)):
            if a == b:
                block = (1.0 + share) * (zs[a].astype(np.float64) @ zs[a].T.astype(np.float64))
            else:
                _, ia, ib = np.intersect1d(positions[a], positions[b], assume_unique=True, return_indices=True)
                block = share * (zs[a][:, ia].astype(np.float64) @ zs[b][:, ib].T.astype(np.float64))
            kernel[offsets[a]:offsets[a + 1], offsets[b]:offsets[b + 1]] = block
            kernel[offsets[b]:offsets[b + 1], offsets[a]:offsets[a + 1]] = block.T
    # one intercept per subject: centred targets (the shared space is centred, as in fit_guidance_ridge)
    y = np.concatenate([t.astype(np.float64) - t.mean(0, dtype=np.float64) for t in targets])  # (n, T)
    lam, u = np.linalg.eigh(kernel)
    lam = np.clip(lam, 0.0, None)
    scale = float(np.mean(np.diag(kernel))) or 1.0
    uty = u.T @ y
    best = None
    for rel in alphas:
        alpha = rel * scale
        shrink = lam / (lam + alpha)
        fitted = u @ (shrink[:, None] * uty)
        hat = np.einsum("ij,j,ij->i", u, shrink, u)
        loo = float(np.mean(((y - fitted) / (1.0 - hat)[:, None]) ** 2))
        if best is None or loo < best[1]:
            best = (rel, loo, u @ (uty / (lam + alpha)[:, None]))  # dual coefficients (n, T)
    rel, loo, dual = best
    # the shared map in the union of the masks: Σ_t z_tᵀ a_t, each subject's columns at its grid positions
    union = np.unique(np.concatenate([np.asarray(p) for p in positions]))
    shared = np.zeros((len(union), y.shape[1]))
    for s, z in enumerate(zs):
        shared[np.searchsorted(union, positions[s])] += z.T.astype(np.float64) @ dual[offsets[s]:offsets[s + 1]]
    out = []
    for s, z in enumerate(zs):
        own = z.T.astype(np.float64) @ dual[offsets[s]:offsets[s + 1]]  # (V_s, T)
        weight = (share * shared[np.searchsorted(union, positions[s])] + own) / stds[s][:, None]
        out.append((means[s].astype(np.float32), weight.astype(np.float32),
                    {"alpha": float(rel), "share": float(share), "loo_mse": loo}))
    return out
