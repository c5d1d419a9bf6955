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
N = 2 000, 3.2 GB at 20 000) and one eigendecomposition of it per cross-validation fold, so
:func:`fit_pool_and_rest` fits jointly only the leading subjects within a memory budget
(``model.alignment_pool_gib``) and each later subject against their shared map, as a newcomer (below), loading
one subject at a time.

A subject added later (``foundation finetune``) is fitted against the pool's shared map without refitting the
pool (:func:`fit_guidance_ridge_to_shared`): ``w_0`` held, its own ``v`` is the ridge fit of what ``c · g · w_0``
leaves unexplained, so its map is shrunk toward the pool's shared map instead of toward zero.  How far (``c``
from 0 = its own ridge to 1 = the pool's objective) and ``alpha`` are chosen by cross-validation on the newcomer's
own training samples: where subjects' maps do not share places in the grid, the shared map does not carry over
and is leaned on less.  With ``c = 1`` and the pool's ``alpha`` the same objective is solved for the one block
that is new: for a subject of the pool, with its own training data, that returns its jointly fitted map (the
joint optimum is optimal in every block).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np

__all__ = ["JOINT_ALPHAS", "NEWCOMER_SCALES", "SharedMap", "SubjectLoader", "fit_guidance_ridge_joint",
           "fit_guidance_ridge_to_shared", "fit_joint_and_shared", "fit_pool_and_rest", "joint_fit_bytes", "pool_size"]

#: ``alpha`` grid, as multiples of the mixed kernel's mean diagonal
JOINT_ALPHAS = tuple(float(a) for a in np.logspace(-4, 2, 13))


@dataclasses.dataclass(frozen=True)
class SharedMap:
    """The pool's part of a joint fit, what a subject added later is fitted against.

    ``positions`` ``(U,)`` int flat grid positions (strictly increasing), ``weight`` ``(U, T)`` the shared map
    times ``share`` (``g · w_0``) in standardised-input units, ``lam`` the absolute ridge penalty of the fit,
    ``alpha`` that penalty relative to the pool's mean kernel diagonal, ``share`` ``g``.
    """

    positions: np.ndarray
    weight: np.ndarray
    lam: float
    alpha: float
    share: float


def fit_guidance_ridge_joint(xs: Sequence[np.ndarray], positions: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                             *, share: float = 1.0, alphas: Sequence[float] = JOINT_ALPHAS,
                             stimuli: Sequence[Sequence[Hashable]] | None = None, folds: int = 5,
                             ) -> list[tuple[np.ndarray, np.ndarray, dict[str, float]]]:
    """Ridge maps of every subject of one volume dataset onto the guidance targets, fitted together
    (:func:`fit_joint_and_shared` without the shared map)."""
    return fit_joint_and_shared(xs, positions, targets, share=share, alphas=alphas, stimuli=stimuli, folds=folds)[0]


def joint_fit_bytes(sizes: Sequence[int], widths: Sequence[int]) -> int:
    """Roughly the peak memory of :func:`fit_pool_and_rest`'s joint fit on subjects of ``sizes`` training samples
    and ``widths`` in-mask voxels: their float32 inputs, standardised in place (``4 · Σ n_s · V_s``), and three
    float64 ``(N, N)`` arrays (the kernel, its eigenvectors, a cross-validation fold's sub-kernel); the float64
    blocks of the products are ``_CHUNK`` voxels wide and not counted."""
    total = sum(sizes)
    return 4 * sum(n * v for n, v in zip(sizes, widths)) + 24 * total * total


def pool_size(sizes: Sequence[int], widths: Sequence[int], budget_gib: float | None,
              max_samples: int | None = None) -> int:
    """How many of the subjects (in order; ``sizes`` their training samples, ``widths`` their in-mask voxels) are
    fitted jointly: the longest leading run whose :func:`joint_fit_bytes` fits in ``budget_gib`` and whose samples
    total at most ``max_samples`` (``None``: no such bound), and at least one."""
    if budget_gib is not None and not budget_gib > 0:
        raise ValueError(f"the joint fit's memory budget must be > 0 GiB or None, got {budget_gib}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"the joint fit's sample budget must be ≥ 1 or None, got {max_samples}")
    n = 1
    while n < len(sizes):
        fits_memory = budget_gib is None or joint_fit_bytes(sizes[: n + 1], widths[: n + 1]) <= budget_gib * 2**30
        fits_time = max_samples is None or sum(sizes[: n + 1]) <= max_samples
        if not (fits_memory and fits_time):
            break
        n += 1
    return n


#: what :func:`fit_pool_and_rest` loads for subject ``i``: ``(x (n_s, V_s), targets (n_s, T), stimulus ids or None)``
SubjectLoader = Callable[[int], tuple[np.ndarray, np.ndarray, "Sequence[Hashable] | None"]]


def fit_pool_and_rest(load: SubjectLoader, positions: Sequence[np.ndarray], sizes: Sequence[int], *,
                      budget_gib: float | None, max_samples: int | None = None, share: float = 1.0,
                      alphas: Sequence[float] = JOINT_ALPHAS, folds: int = 5,
                      ) -> tuple[int, SharedMap, Iterator[tuple[int, np.ndarray, np.ndarray, dict]]]:
    """:func:`fit_joint_and_shared` for as many subjects as ``budget_gib`` of memory and ``max_samples`` hold; the rest
    one at a time.

    The joint fit holds every pooled subject's inputs and an ``(N, N)`` kernel of all their samples (N² memory, N³
    time), so with hundreds of subjects it cannot take them all.  The leading subjects whose fit fits in
    ``budget_gib`` (:func:`joint_fit_bytes`) and whose samples total at most ``max_samples`` (:func:`pool_size`) are
    loaded and fitted jointly and give the shared map;
    every later subject is loaded only when its turn comes (one subject's data in memory at a time) and fitted
    against that map exactly as a subject added by fine-tuning is (:func:`fit_guidance_ridge_to_shared`: ``c`` and
    ``alpha`` by cross-validation on its own samples).  Its samples do not shape the shared map; nothing else is
    lost.  With every subject inside the budget this is :func:`fit_joint_and_shared`.

    Args:
        load: ``load(i)`` -> subject ``i``'s ``(x, targets, stimuli)`` (:data:`SubjectLoader`); a float32 ``x`` is
            standardised in place (give a copy if it must stay).
        positions: per subject ``(V_s,)`` flat grid positions (strictly increasing).
        sizes: per subject its training samples (what ``load`` will return), for the budget.

    Returns:
        ``(pooled, shared map, fits)``: how many leading subjects were fitted jointly, the pool's
        :class:`SharedMap`, and an iterator over ``(i, mean, weight, info)`` for every subject in order
        (``info["pool"]``: ``"joint"`` or ``"against the shared map"``), computed as it is consumed after the pool.
    """
    if len(positions) != len(sizes) or not sizes:
        raise ValueError(f"one position array and size per subject: got {len(positions)}, {len(sizes)}")
    n = pool_size(sizes, [len(p) for p in positions], budget_gib, max_samples)
    loaded = [load(i) for i in range(n)]
    ids = [stim for _, _, stim in loaded]
    fits, shared = fit_joint_and_shared([x for x, _, _ in loaded], positions[:n], [t for _, t, _ in loaded],
                                        share=share, alphas=alphas, folds=folds, overwrite_inputs=True,
                                        stimuli=None if any(i is None for i in ids) else ids)
    del loaded

    def every() -> Iterator[tuple[int, np.ndarray, np.ndarray, dict]]:
        for i, (mean, weight, info) in enumerate(fits):
            yield i, mean, weight, {**info, "pool": "joint"}
        fits.clear()
        for i in range(n, len(sizes)):
            x, targets, stimuli = load(i)
            mean, weight, info = fit_guidance_ridge_to_shared(x, positions[i], targets, shared, alphas=alphas,
                                                              stimuli=stimuli, folds=folds, overwrite_inputs=True)
            yield i, mean, weight, {**info, "pool": "against the shared map"}

    return n, shared, every()


def fit_joint_and_shared(xs: Sequence[np.ndarray], positions: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                         *, share: float = 1.0, alphas: Sequence[float] = JOINT_ALPHAS,
                         stimuli: Sequence[Sequence[Hashable]] | None = None, folds: int = 5,
                         overwrite_inputs: bool = False,
                         ) -> tuple[list[tuple[np.ndarray, np.ndarray, dict[str, float]]], SharedMap]:
    """Ridge maps of every subject of one volume dataset onto the guidance targets, fitted together, and
    the shared map a later subject is fitted against (:class:`SharedMap`).

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
        overwrite_inputs: standardise float32 ``xs`` in place instead of in a copy (halves the memory; the
            caller's arrays are then the standardised inputs).

    Returns:
        per subject ``(mean (V_s,), weight (V_s, T), info)`` with ``(x − mean) @ weight`` its aligned
        tokens; ``info`` holds the chosen ``alpha`` (relative), ``share``, how alpha was chosen (``cv``) and
        that choice's mean squared error (``cv_mse``); and the :class:`SharedMap`.
    """
    if not (len(xs) == len(positions) == len(targets)) or not xs:
        raise ValueError(f"one input, position and target array per subject: got {len(xs)}, {len(positions)}, "
                         f"{len(targets)}")
    if share < 0 or not np.isfinite(share):
        raise ValueError(f"share must be a finite number ≥ 0, got {share}")
    zs, means, stds = [], [], []
    for s, (x, pos, t) in enumerate(zip(xs, positions, targets)):
        mean, std = _checked_moments(x, pos, t, who=f"subject {s}: ")
        zs.append(_standardise(x, mean, std, overwrite=overwrite_inputs))
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
                block = (1.0 + share) * _gram(zs[a], zs[a])
            else:
                _, ia, ib = np.intersect1d(positions[a], positions[b], assume_unique=True, return_indices=True)
                block = share * _gram(zs[a], zs[b], ia, ib)
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
        errors = [float(e) for e in _loo_column_errors(lam, u, y, [a * scale for a in alphas],
                                                       sizes=sizes).mean(1)]
    pick = int(np.argmin(errors))
    rel, cv_mse = float(alphas[pick]), float(errors[pick])
    dual = u @ (uty / (lam + rel * scale)[:, None])  # dual coefficients (n, T)
    # the shared map in the union of the masks: Σ_t z_tᵀ a_t, each subject's columns at its grid positions
    union = np.unique(np.concatenate([np.asarray(p) for p in positions]))
    columns = [np.searchsorted(union, p) for p in positions]
    owns = [_transposed_product(z, dual[offsets[s]:offsets[s + 1]]) for s, z in enumerate(zs)]  # (V_s, T) each
    shared = np.zeros((len(union), y.shape[1]))
    for cols, own in zip(columns, owns):
        shared[cols] += own
    out = []
    for s, (cols, own) in enumerate(zip(columns, owns)):
        weight = (share * shared[cols] + own) / stds[s][:, None]
        out.append((means[s].astype(np.float32), weight.astype(np.float32),
                    {"alpha": rel, "share": float(share), "cv_mse": cv_mse,
                     "cv": "leave-one-out" if stimuli is None else f"{folds}-fold over stimuli"}))
    pool = SharedMap(positions=union, weight=(share * shared).astype(np.float32), lam=rel * scale, alpha=rel,
                     share=float(share))
    return out, pool


#: how much of the pool's shared map a subject added later may lean on (``c`` in ``c · g · w_0``), chosen with
#: ``alpha`` by cross-validation on the newcomer's own training samples: 0 is the per-subject ridge
NEWCOMER_SCALES = (0.0, 0.25, 0.5, 1.0)


def fit_guidance_ridge_to_shared(x: np.ndarray, positions: np.ndarray, targets: np.ndarray, shared: SharedMap, *,
                                 scales: Sequence[float] = NEWCOMER_SCALES,
                                 alphas: Sequence[float] | None = JOINT_ALPHAS,
                                 stimuli: Sequence[Hashable] | None = None, folds: int = 5,
                                 overwrite_inputs: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """One subject's map fitted against a pool's :class:`SharedMap` (the pool is not refitted).

    The map is ``c · (g · w_0) + v`` at the subject's voxels (voxels outside the pool's masks have no shared part):
    ``v`` is the kernel ridge fit of its centred targets minus ``c · z @ (g · w_0)``, ``z`` its inputs standardised
    per voxel as in the joint fit.  ``c`` and the ridge ``alpha`` are chosen together on the subject's training
    samples — ``folds``-fold cross-validation over its stimuli, or exact leave-one-out without stimulus ids — so a
    pool whose shared map does not carry over to this subject (maps that differ in the grid) is leaned on less or
    not at all (``c = 0``: the subject's own ridge).  ``scales=(1.0,), alphas=None`` solves the pool's objective for
    this one block (the pool's penalty ``shared.lam``, no choice): for a pool subject with its own training data
    that returns its jointly fitted map.

    Args:
        x: ``(n, V)`` the subject's training inputs (its in-mask voxels).
        positions: ``(V,)`` their flat grid positions, strictly increasing.
        targets: ``(n, T)`` shared-space targets.
        shared: the pool's shared map (from :func:`fit_joint_and_shared`, or the model's
            :meth:`~foundation.model.alignment.SubjectAlignment.shared_map`).
        scales: the grid of ``c``.
        alphas: the ``alpha`` grid relative to the subject's mean kernel diagonal; ``None``: ``shared.lam``.
        stimuli: ``(n,)`` stimulus ids of the samples (for the folds).
        folds: the number of stimulus folds.
        overwrite_inputs: standardise a float32 ``x`` in place (see :func:`fit_joint_and_shared`).

    Returns:
        ``(mean (V,), weight (V, T), info)``: ``info`` holds ``alpha`` (relative to the subject's kernel, or the
        pool's when ``alphas`` is ``None``), ``shared_scale`` (the chosen ``c``), ``share`` (the pool's ``g``),
        ``shared_voxels`` (the fraction of the subject's voxels the pool's map covers), and with a choice made,
        ``cv`` and ``cv_mse``.
    """
    x, positions = np.asarray(x), np.asarray(positions)
    mean, std = _checked_moments(x, positions, targets)
    if targets.shape[1] != shared.weight.shape[1]:
        raise ValueError(f"targets have {targets.shape[1]} columns, the shared map {shared.weight.shape[1]}")
    if not scales or any(c < 0 or not np.isfinite(c) for c in scales):
        raise ValueError(f"scales must be finite numbers ≥ 0, got {list(scales)}")
    z = _standardise(x, mean, std, overwrite=overwrite_inputs)
    base = np.zeros((len(positions), targets.shape[1]))
    _, mine, theirs = np.intersect1d(positions, shared.positions, assume_unique=True, return_indices=True)
    base[mine] = shared.weight[theirs]
    centred = targets.astype(np.float64) - targets.mean(0, dtype=np.float64)
    offset = _product(z, base)  # (n, T): the shared map's prediction
    kernel = _gram(z, z)
    info: dict[str, float | str] = {"share": shared.share, "shared_voxels": len(mine) / max(len(positions), 1)}
    if alphas is None:
        lams, rel = [shared.lam], [shared.alpha]
    else:
        diag = float(np.mean(np.diag(kernel))) or 1.0
        lams, rel = [a * diag for a in alphas], list(alphas)
    if len(scales) * len(lams) == 1:
        c, pick = float(scales[0]), 0
    else:
        t = centred.shape[1]
        stacked = np.concatenate([centred - c * offset for c in scales], axis=1)  # (n, |scales| · T)
        if stimuli is not None:
            errors = _cv_column_errors(kernel, stacked, lams, _stimulus_folds([stimuli], [len(z)], folds))
            info["cv"] = f"{folds}-fold over stimuli"
        else:
            eig, vec = np.linalg.eigh(kernel)
            errors = _loo_column_errors(np.clip(eig, 0.0, None), vec, stacked, lams, sizes=[len(z)])
            info["cv"] = "leave-one-out"
        errors = errors.reshape(len(lams), len(scales), t).mean(2)
        pick, which = np.unravel_index(int(np.argmin(errors)), errors.shape)
        c = float(scales[which])
        info["cv_mse"] = float(errors[pick, which])
    dual = np.linalg.solve(kernel + lams[pick] * np.eye(len(z)), centred - c * offset)  # (n, T)
    weight = (c * base + _transposed_product(z, dual)) / std[:, None]
    info.update(alpha=float(rel[pick]), shared_scale=c)
    return mean.astype(np.float32), weight.astype(np.float32), info


def _checked_moments(x: np.ndarray, positions: np.ndarray, targets: np.ndarray, *, who: str = ""
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One subject's inputs ``(n, V)`` checked against its positions ``(V,)`` and targets ``(n, T)``; returns the
    per-voxel mean and standard deviation (+1e-6) its inputs are standardised with (float64)."""
    if x.ndim != 2 or x.shape[1] != len(positions) or len(targets) != len(x):
        raise ValueError(f"{who}inputs {x.shape}, {len(positions)} positions, {len(targets)} targets do not match")
    if len(x) < 3:
        raise ValueError(f"{who}an alignment needs at least 3 training samples, got {len(x)}")
    if len(positions) > 1 and np.any(np.diff(positions) <= 0):
        raise ValueError(f"{who}voxel positions must be strictly increasing")
    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    for c in range(0, x.shape[1], _CHUNK):  # float64 moments without an (n, V) float64 copy
        block = x[:, c:c + _CHUNK].astype(np.float64)
        mean[c:c + _CHUNK] = block.mean(0)
        var[c:c + _CHUNK] = block.var(0)
    return mean, np.sqrt(var) + 1e-6


#: voxels per block of the float64 products below: an (n, V) input is never copied whole to float64
#: (n × 8192 × 8 bytes per block: 128 MB at n = 2 000)
_CHUNK = 8192


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray, *, overwrite: bool) -> np.ndarray:
    """``(x − mean) / std`` in float32: in place when allowed and ``x`` is a writeable float32 array, else a copy."""
    z = x if overwrite and x.dtype == np.float32 and x.flags.writeable else np.array(x, dtype=np.float32)
    z -= mean.astype(np.float32)
    z /= std.astype(np.float32)
    return z


def _gram(a: np.ndarray, b: np.ndarray, ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> np.ndarray:
    """``a[:, ia] @ b[:, ib].T`` ``(n_a, n_b)`` accumulated in float64 over blocks of columns."""
    same = a is b and ia is None and ib is None
    ia = np.arange(a.shape[1]) if ia is None else ia
    ib = np.arange(b.shape[1]) if ib is None else ib
    out = np.zeros((len(a), len(b)))
    for c in range(0, len(ia), _CHUNK):
        left = a[:, ia[c:c + _CHUNK]].astype(np.float64)
        out += left @ (left if same else b[:, ib[c:c + _CHUNK]].astype(np.float64)).T
    return out


def _product(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``z @ w`` ``(n, T)`` for ``z`` ``(n, V)``, ``w`` ``(V, T)``, accumulated in float64 over blocks of ``V``."""
    out = np.zeros((len(z), w.shape[1]))
    for c in range(0, z.shape[1], _CHUNK):
        out += z[:, c:c + _CHUNK].astype(np.float64) @ w[c:c + _CHUNK]
    return out


def _transposed_product(z: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``z.T @ d`` ``(V, T)`` for ``z`` ``(n, V)``, ``d`` ``(n, T)``, in float64, one block of ``V`` at a time."""
    out = np.empty((z.shape[1], d.shape[1]))
    for c in range(0, z.shape[1], _CHUNK):
        out[c:c + _CHUNK] = z[:, c:c + _CHUNK].astype(np.float64).T @ d
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
    """Mean squared error of each ``alpha`` over the held-out rows of every fold, all columns of ``y`` together."""
    return [float(e) for e in _cv_column_errors(kernel, y, alphas, held).mean(1)]


def _cv_column_errors(kernel: np.ndarray, y: np.ndarray, lams: Sequence[float], held: Sequence[np.ndarray]) -> np.ndarray:
    """``(len(lams), y.shape[1])`` mean squared error of every column of ``y`` under each ridge penalty, over the
    held-out rows of every fold (one eigendecomposition per fold)."""
    sse = np.zeros((len(lams), y.shape[1]))
    count = 0
    for rows in held:
        keep = np.setdiff1d(np.arange(len(y)), rows)
        lam, u = np.linalg.eigh(kernel[np.ix_(keep, keep)])
        lam = np.clip(lam, 0.0, None)
        uty = u.T @ y[keep]
        cross = kernel[np.ix_(rows, keep)] @ u  # (held, kept eigvecs)
        for j, penalty in enumerate(lams):
            sse[j] += ((y[rows] - cross @ (uty / (lam + penalty)[:, None])) ** 2).sum(0)
        count += rows.size
    return sse / count


def _loo_column_errors(lam: np.ndarray, u: np.ndarray, y: np.ndarray, lams: Sequence[float], *,
                       sizes: Sequence[int]) -> np.ndarray:
    """``(len(lams), y.shape[1])`` exact leave-one-out mean squared error of kernel ridge, every column of ``y``,
    from the kernel's eigendecomposition (``lam`` clipped at 0, ``u``).

    The inputs were centred per subject (``sizes``: the subjects' consecutive row counts) and ``y`` is centred the
    same way: the model has one unpenalised intercept per subject, which spans the kernel's null directions
    ``1_s`` (``K 1_s = 0``). Its hat matrix is ``P + K (K + λ I)⁻¹`` with ``P`` the projection onto those
    indicators (diagonal ``1 / n_s``); leaving ``P`` out (as a kernel ridge without intercept) scores each sample
    by a residual shrunk toward zero at small ``λ`` and makes leave-one-out choose the grid's floor."""
    if sum(sizes) != len(y):
        raise ValueError(f"sizes {list(sizes)} do not add up to the {len(y)} rows")
    intercept = np.concatenate([np.full(n, 1.0 / n) for n in sizes])  # (n,) diagonal of P
    uty = u.T @ y
    out = np.empty((len(lams), y.shape[1]))
    for j, penalty in enumerate(lams):
        shrink = lam / (lam + penalty)
        hat = intercept + np.einsum("ij,j,ij->i", u, shrink, u)
        out[j] = np.mean(((y - u @ (shrink[:, None] * uty)) / (1.0 - hat)[:, None]) ** 2, axis=0)
    return out
