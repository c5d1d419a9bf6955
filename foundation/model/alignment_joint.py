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
subjects runs over the voxels both masks hold.  The ridge ``alpha`` (a grid relative to the kernel's mean
diagonal) is chosen on training samples only, by cross-validation over stimuli (every subject's samples of a
stimulus held out together) or, without stimulus ids, by exact leave-one-out.  The result is one ordinary
``(mean (V_s,), weight (V_s, T))`` map per subject, installed in
:class:`~foundation.model.alignment.SubjectAlignment` like any other, so the model and its forward are
unchanged.  Cost: the ``(N, N)`` kernel of all ``N`` training samples of the dataset (float64: 32 MB at
N = 2 000, 3.2 GB at 20 000) and one eigendecomposition of it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["JOINT_ALPHAS", "fit_guidance_ridge_joint"]

#: ``alpha`` grid, as multiples of the mixed kernel's mean diagonal
JOINT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))


def fit_guidance_ridge_joint(xs: Sequence[np.ndarray], positions: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                             *, share: float = 1.0, alphas: Sequence[float] = JOINT_ALPHAS,
                             stimuli: Sequence[Sequence[Hashable]] | None = None, folds: int = 5,
                             ) -> list[tuple[np.ndarray, np.ndarray, dict[str, float]]]:
    """Ridge maps of every subject of one volume dataset onto the guidance targets, fitted together.

    Args:
        xs: per subject ``(n_s, V_s)`` training inputs (its in-mask voxels).
        positions: per subject ``(V_s,)`` int flat grid positions of those voxels (strictly increasing).
        targets: per subject ``(n_s, T)`` shared-space targets of the same samples.
        share: ``g ≥ 0``, the prior weight of the map shared in the grid (0: per-subject ridge).
        alphas: the ``alpha`` grid, relative to the mixed kernel's mean diagonal.
        stimuli: per subject ``(n_s,)`` stimulus ids of the samples.  Given, ``alpha`` is chosen by ``folds``-fold
            cross-validation over *stimuli* (contiguous blocks of the sorted distinct ids: every sample of a
            stimulus, in every subject, on one side), because subjects that saw the same stimulus share its
            target and leave-one-out would score a sample by its twins in the other subjects (and its
            neighbours in time); without, exact leave-one-out.
        folds: the number of stimulus folds.

    Returns:
        per subject ``(mean (V_s,), weight (V_s, T), info)`` with ``(x − mean) @ weight`` its aligned
        tokens; ``info`` holds the chosen ``alpha`` (relative), ``share``, how alpha was chosen (``cv``) and
        that choice's mean squared error (``cv_mse``).
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
    scale = float(np.mean(np.diag(kernel))) or 1.0
    errors = _cv_errors(kernel, y, [a * scale for a in alphas], _stimulus_folds(stimuli, sizes, folds)) \
        if stimuli is not None else None
    lam, u = np.linalg.eigh(kernel)
    lam = np.clip(lam, 0.0, None)
    uty = u.T @ y
    if errors is None:  # exact leave-one-out
        errors = []
        for rel in alphas:
            shrink = lam / (lam + rel * scale)
            hat = np.einsum("ij,j,ij->i", u, shrink, u)
            errors.append(float(np.mean(((y - u @ (shrink[:, None] * uty)) / (1.0 - hat)[:, None]) ** 2)))
    pick = int(np.argmin(errors))
    rel, cv_mse = float(alphas[pick]), float(errors[pick])
    dual = u @ (uty / (lam + rel * scale)[:, None])  # dual coefficients (n, T)
    # the shared map in the union of the masks: Σ_t z_tᵀ a_t, each subject's columns at its grid positions
    union = np.unique(np.concatenate([np.asarray(p) for p in positions]))
    columns = [np.searchsorted(union, p) for p in positions]
    owns = [z.T.astype(np.float64) @ dual[offsets[s]:offsets[s + 1]] for s, z in enumerate(zs)]  # (V_s, T) each
    shared = np.zeros((len(union), y.shape[1]))
    for cols, own in zip(columns, owns):
        shared[cols] += own
    out = []
    for s, (cols, own) in enumerate(zip(columns, owns)):
        weight = (share * shared[cols] + own) / stds[s][:, None]
        out.append((means[s].astype(np.float32), weight.astype(np.float32),
                    {"alpha": rel, "share": float(share), "cv_mse": cv_mse,
                     "cv": "leave-one-out" if stimuli is None else f"{folds}-fold over stimuli"}))
    return out


def _stimulus_folds(stimuli: Sequence[Sequence[Hashable]], sizes: Sequence[int], folds: int) -> list[np.ndarray]:
    """Held-out sample rows of each fold: contiguous blocks of the sorted distinct stimulus ids."""
    if len(stimuli) != len(sizes) or any(len(ids) != n for ids, n in zip(stimuli, sizes)):
        raise ValueError("stimuli: one id per training sample of every subject")
    ids = [str(i) for per in stimuli for i in per]
    distinct = sorted(set(ids))
    if folds < 2 or len(distinct) < folds:
        raise ValueError(f"cross-validation over stimuli needs at least {max(folds, 2)} distinct stimuli and "
                         f"folds ≥ 2, got {len(distinct)} stimuli and folds={folds}")
    block = {stim: f for f, part in enumerate(np.array_split(np.arange(len(distinct)), folds)) for stim in
             (distinct[i] for i in part)}
    fold_of = np.array([block[i] for i in ids])
    return [np.flatnonzero(fold_of == f) for f in range(folds)]


def _cv_errors(kernel: np.ndarray, y: np.ndarray, alphas: Sequence[float], held: Sequence[np.ndarray]) -> list[float]:
    """Mean squared error of each ``alpha`` over the held-out rows of every fold (one eigendecomposition per fold)."""
    sse, count = np.zeros(len(alphas)), 0
    for rows in held:
        keep = np.setdiff1d(np.arange(len(y)), rows)
        lam, u = np.linalg.eigh(kernel[np.ix_(keep, keep)])
        lam = np.clip(lam, 0.0, None)
        uty = u.T @ y[keep]
        cross = kernel[np.ix_(rows, keep)] @ u  # (held, kept eigvecs)
        for j, alpha in enumerate(alphas):
            sse[j] += float(((y[rows] - cross @ (uty / (lam + alpha)[:, None])) ** 2).sum())
        count += rows.size * y.shape[1]
    return list(sse / count)
