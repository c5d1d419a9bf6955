"""Per-subject linear read-outs (``foundation bench`` methods ``ridge`` and ``logistic``): the yardstick.

One model per subject on the dataset's own inputs, flattened (ROI datasets: the ``tokens * dim``
token values; volume datasets: the subject's in-mask voxels), standardised per feature with the
subject's training statistics:

* ``ridge`` — a multi-output ridge regression onto the 0/1 label vector (scikit-learn ``Ridge``).
  Its scores ``ŷ`` become probabilities through ``σ(4 (ŷ − 0.5))``, a monotone map that keeps the
  ranks (hence mAP and AUC) and the 0.5 decision threshold (hence Hamming) and is the identity to
  first order at 0.5.
* ``logistic`` — one L2-regularised logistic regression per label (scikit-learn
  ``LogisticRegression``, lbfgs); a label without both classes in the subject's training split gets
  its training prevalence as a constant probability.

The regularisation (``alpha`` for ridge, ``C`` for logistic) is chosen per subject on that
subject's **validation** mAP from a fixed grid; the test split is scored once, with the chosen value.

``--alignment guidance-ridge|guidance-encoding`` (bench method ``aligned-ridge``) makes it *one* read-out
pooled over every subject of a dataset instead: each subject's inputs first go through its closed-form
alignment onto the guidance space (the same fitters, basis and ``model.alignment_dim`` as
``model.alignment``, fitted on the subject's training samples only), then a single ridge / logistic
read-out is fitted on all subjects' aligned training samples together, its regularisation chosen on
the mean over subjects of each subject's validation mAP.  No learned per-subject parameters: the linear
counterpart of ``aligned-mlp``, which tells whether a shared model's gain comes from pooling or from
its network.

``--alignment grid`` (bench method ``grid-ridge``; volume datasets) pools without any fitted alignment: each
subject's voxels, standardised with its own training statistics, are placed at their positions in the dataset's
voxel grid (the registration the data already has; the union of the subjects' masks, 0 outside a subject's own),
and one read-out is fitted on all subjects' training samples — one map over the brain shared by every subject,
the linear counterpart of a network whose read-out weighs positions the same for every subject
(``model.volume_readout: spatial``, ``model.volume_linear_rank``).  It holds every subject's training samples at
the union's width in memory (samples × voxels × 4 bytes).

Writes ``metrics.json`` in the schema of a training run (per-subject test metrics, the chosen
values), so ``foundation bench`` reports it beside every other method.  ``datasets[].train_fraction``
< 1 fits on the same fixed subset of each subject's training samples as the trained methods.

    python -m foundation.workflows.linear RECIPE [key=value ...] [--solver ridge|logistic] [--alignment NAME]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from foundation.core.errors import DataError, FoundationError

Solver = Literal["ridge", "logistic"]
SOLVERS: tuple[str, ...] = ("ridge", "logistic")
#: ridge ``alpha`` grid (on standardised features) and logistic ``C`` grid (inverse strength)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
LOGISTIC_CS = tuple(float(c) for c in np.logspace(-5, 1, 13))
#: ``--alignment grid``: the subjects' voxels placed in the shared grid, no fitted alignment (volume datasets)
GRID = "grid"


def ridge_probabilities(scores: np.ndarray) -> np.ndarray:
    """``σ(4 (ŷ − 0.5))``: ridge scores ``(n, C)`` → probabilities with the same ranks and 0.5 threshold."""
    return 1.0 / (1.0 + np.exp(-4.0 * (scores - 0.5)))


def _fit_ridge(x: np.ndarray, y: np.ndarray, strength: float) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=strength).fit(x, y)
    return lambda z: ridge_probabilities(model.predict(z))


def _fit_logistic(x: np.ndarray, y: np.ndarray, strength: float, *, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    models: list[Any] = []
    for c in range(y.shape[1]):
        if 0 < y[:, c].sum() < len(y):
            models.append(LogisticRegression(C=strength, max_iter=2000, random_state=seed).fit(x, y[:, c]))
        else:
            models.append(float(y[:, c].mean()))

    def predict(z: np.ndarray) -> np.ndarray:
        cols = [m.predict_proba(z)[:, 1] if not isinstance(m, float) else np.full(len(z), m) for m in models]
        return np.stack(cols, 1)

    return predict


def fit_subject(train, val, *, solver: Solver, seed: int = 0,
                grid: Sequence[float] | None = None) -> tuple[float, float, Callable[[np.ndarray], np.ndarray]]:
    """Fit one subject's read-out for every value of ``grid``; keep the best on validation mAP.

    Args:
        train, val: :class:`foundation.data.splits.Split` of one subject (``x`` ``(n, F)``, ``y`` ``(n, C)``).
        solver: ``"ridge"`` or ``"logistic"``.
        grid: regularisation values (ridge ``alpha`` / logistic ``C``); the module's grid by default.

    Returns:
        ``(chosen value, its validation mAP, predict)`` where ``predict`` maps raw inputs ``(n, F)``
        to probabilities ``(n, C)`` (the training standardisation included).
    """
    from foundation.objectives.metrics import multilabel_metrics

    import torch

    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    mean, std = train.x.mean(0), train.x.std(0) + 1e-6
    xt, xv = (train.x - mean) / std, (val.x - mean) / std
    grid = tuple(grid or (RIDGE_ALPHAS if solver == "ridge" else LOGISTIC_CS))
    best = None
    for strength in grid:
        fit = _fit_ridge(xt, train.y, strength) if solver == "ridge" else _fit_logistic(xt, train.y, strength, seed=seed)
        score = multilabel_metrics(torch.from_numpy(fit(xv)).float(), torch.from_numpy(val.y).int())["mAP"]
        if best is None or (np.isfinite(score) and score > best[1]):
            best = (strength, float(score), fit)
    strength, score, fit = best
    return strength, score, lambda z: fit((z - mean) / std)


def _subject_splits(index, cfg, subject: str, *, what: str) -> dict[str, Any]:
    """One subject's train (``train_fraction`` applied, as the trained methods see it), val and test splits."""
    from foundation.data.loader import DatasetStream
    from foundation.data.splits import read_split

    data = {split: read_split(index, subject, split) for split in ("train", "val", "test")}
    if cfg.train_fraction < 1.0:  # the same fixed subset the trained methods see
        stream = DatasetStream(index, subjects=[subject], train_fraction=cfg.train_fraction)
        data["train"] = data["train"].subset({k for keys in stream.train_keys().values() for k in keys})
    for split, part in data.items():
        if len(part) == 0 and split != "test":
            raise DataError(f"{cfg.id}/{subject}: the {split} split is empty; the {what} baseline fits on train "
                            f"and chooses its regularisation on val (shards {index.root})")
    return data


def _predict_subject(gid: str, parts: dict[str, Any], predict: Callable[[np.ndarray], np.ndarray],
                     out: dict[str, dict[str, list]]) -> None:
    """Append one subject's val and test predictions to ``out`` (``{split: {"keys", "subjects", "probs",
    "labels"}}``)."""
    for split in ("val", "test"):
        part = parts[split]
        if len(part) == 0:
            continue
        o = out[split]
        o["keys"] += part.keys
        o["subjects"] += [gid] * len(part)
        o["probs"].append(predict(part.x).astype(np.float32))
        o["labels"].append(part.y)


def _fit_and_predict_subject(index, cfg, subject: str, *, solver: Solver, seed: int, what: str,
                             out: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Read one subject's splits, fit its own read-out, append its predictions to ``out``; returns what was
    chosen.  Its samples are released on return, so the per-subject baseline holds one subject at a time."""
    parts = _subject_splits(index, cfg, subject, what=what)
    strength, val_map, predict = fit_subject(parts["train"], parts["val"], solver=solver, seed=seed)
    _predict_subject(f"{cfg.id}/{subject}", parts, predict, out)
    return {"strength": strength, "val_mAP": val_map, "n_train": len(parts["train"])}


def fit_pooled_readout(z: np.ndarray, y: np.ndarray, val: Sequence[tuple[np.ndarray, np.ndarray]], *,
                       solver: Solver, seed: int = 0, grid: Sequence[float] | None = None,
                       ) -> tuple[float, float, Callable[[np.ndarray], np.ndarray]]:
    """One read-out of aligned tokens pooled over subjects, its strength chosen on validation.

    Args:
        z: ``(n, 2k)`` aligned training tokens of every subject; ``y`` ``(n, C)`` their labels.
        val: per subject ``(aligned validation tokens, labels)``; a strength is scored by the mean of the
            subjects' validation mAP.
        solver, seed, grid: as :func:`fit_subject`.

    Returns:
        ``(chosen value, its validation mAP, predict)``: ``predict`` maps aligned tokens ``(m, 2k)`` to
        probabilities ``(m, C)``.
    """
    from foundation.objectives.metrics import multilabel_metrics

    import torch

    # centred, not standardised: the guidance basis already has unit mean variance, and its principal
    # components keep their relative scale, so the ridge shrinks the weak directions most
    centre = z.mean(0)
    zc = z - centre
    scored = [(zv - centre, torch.from_numpy(yv).int()) for zv, yv in val]
    best = None
    for strength in tuple(grid or (RIDGE_ALPHAS if solver == "ridge" else LOGISTIC_CS)):
        fit = _fit_ridge(zc, y, strength) if solver == "ridge" else _fit_logistic(zc, y, strength, seed=seed)
        score = float(np.nanmean([multilabel_metrics(torch.from_numpy(fit(zv)).float(), yv)["mAP"]
                                  for zv, yv in scored]))
        if best is None or (np.isfinite(score) and score > best[1]):
            best = (strength, score, fit)
    strength, score, fit = best
    return strength, score, lambda tokens: fit(tokens - centre)


def fit_pooled_aligned(data: dict[str, dict[str, Any]], *, alignment: str, solver: Solver, dim: int, seed: int = 0,
                       grid: Sequence[float] | None = None, positions: dict[str, np.ndarray] | None = None,
                       share: float = 1.0, pool_gib: float | None = None, pool_samples: int | None = None,
                       ) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, Any]]:
    """One read-out for all subjects of a dataset on their aligned inputs (``--alignment``).

    Args:
        data: subject -> ``{"train", "val", "test"}`` :class:`~foundation.data.splits.Split`
            (``x`` ``(n, F_s)``: each subject its own input width).
        alignment: a fitter of :data:`foundation.model.alignment.FITTERS`, or ``guidance-ridge-joint``
            (:data:`~foundation.model.alignment.JOINT_FITTERS`: all subjects' maps fitted together).
        dim: components per guidance level (``model.alignment_dim``; at most the features' widths).
        positions: ``guidance-ridge-joint`` only: subject -> ``(F_s,)`` flat grid positions of its inputs.
        share: ``guidance-ridge-joint`` only: ``model.alignment_share``.
        pool_gib, pool_samples: ``guidance-ridge-joint`` only: ``model.alignment_pool_gib`` and
            ``model.alignment_pool_samples`` (``None``: no bound).

    Returns:
        ``(subject -> predict, report)``: ``predict`` maps the subject's raw inputs ``(n, F_s)`` to
        probabilities ``(n, C)``; ``report`` holds the chosen value, its validation mAP (mean over
        subjects) and each subject's alignment ``alpha``.
    """
    from foundation.model.alignment import FITTED_ALIGNMENTS, FITTERS, JOINT_FITTERS, guidance_bases, guidance_targets
    from foundation.model.alignment_joint import fit_pool_and_rest

    if alignment not in FITTED_ALIGNMENTS:
        raise ValueError(f"alignment must be one of {FITTED_ALIGNMENTS}, got {alignment!r}")
    if alignment in JOINT_FITTERS and positions is None:
        raise ValueError(f"alignment {alignment!r} needs the subjects' voxel grid positions (volume datasets)")
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for parts in data.values():
        train = parts["train"]
        for i, stimulus in enumerate(train.stimuli):
            seen.setdefault(stimulus, (train.low[i], train.high[i]))
    first = next(iter(data.values()))["train"]
    bases = guidance_bases(seen, min(dim, first.low.shape[1], first.high.shape[1]))
    maps, report = {}, {"alignment": alignment, "alpha": {}}
    if alignment in JOINT_FITTERS:
        trains = [p["train"] for p in data.values()]
        _, _, every = fit_pool_and_rest(
            lambda i: (trains[i].x.copy(), guidance_targets(trains[i].low, trains[i].high, bases), trains[i].stimuli),
            [positions[s] for s in data], [len(t) for t in trains], budget_gib=pool_gib, max_samples=pool_samples,
            share=share)
        fits = [(mean, weight, info) for _, mean, weight, info in every]
        report["share"] = share
        report["pool"] = {s: info["pool"] for s, (_, _, info) in zip(data, fits)}
    else:
        fits = [FITTERS[alignment](p["train"].x, guidance_targets(p["train"].low, p["train"].high, bases))
                for p in data.values()]
    for subject, (mean, weight, info) in zip(data, fits):
        maps[subject] = (mean, weight)
        report["alpha"][subject] = info["alpha"]
        if "rank" in info:  # guidance-pca-ridge: the number of components kept (0: all)
            report.setdefault("rank", {})[subject] = int(info["rank"])

    def aligned(subject: str, x: np.ndarray) -> np.ndarray:
        mean, weight = maps[subject]
        return (x - mean) @ weight  # (n, 2k)

    z = np.concatenate([aligned(s, parts["train"].x) for s, parts in data.items()])
    y = np.concatenate([parts["train"].y for parts in data.values()])
    # each subject's validation inputs aligned once, scored under every value of the grid
    val = [(aligned(s, p["val"].x), p["val"].y) for s, p in data.items()]
    strength, score, fit = fit_pooled_readout(z, y, val, solver=solver, seed=seed, grid=grid)
    report.update(strength=strength, val_mAP=score, n_train=len(z))
    predictors = {s: (lambda x, s=s: fit(aligned(s, x))) for s in data}
    return predictors, report


def fit_pooled_grid(data: dict[str, dict[str, Any]], *, positions: dict[str, np.ndarray], solver: Solver,
                    seed: int = 0, grid: Sequence[float] | None = None,
                    ) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, Any]]:
    """One read-out for all subjects of a volume dataset on their voxels placed in the shared grid (``--alignment
    grid``).

    Args:
        data: subject -> ``{"train", "val", "test"}`` :class:`~foundation.data.splits.Split` (``x`` ``(n, V_s)``:
            the subject's in-mask voxels).
        positions: subject -> ``(V_s,)`` flat grid positions of its voxels, in the order of ``x``'s columns.
        solver, seed, grid: as :func:`fit_subject`.

    Returns:
        ``(subject -> predict, report)`` as :func:`fit_pooled_aligned`; ``report["grid_voxels"]``: the union's size.
    """
    union = np.unique(np.concatenate([positions[s] for s in data]))
    columns = {s: np.searchsorted(union, positions[s]) for s in data}
    stats = {s: (p["train"].x.mean(0), p["train"].x.std(0) + 1e-6) for s, p in data.items()}

    def placed(subject: str, x: np.ndarray) -> np.ndarray:
        mean, std = stats[subject]
        out = np.zeros((len(x), len(union)), dtype=np.float32)
        out[:, columns[subject]] = (x - mean) / std
        return out  # (n, U)

    z = np.concatenate([placed(s, parts["train"].x) for s, parts in data.items()])
    y = np.concatenate([parts["train"].y for parts in data.values()])
    val = [(placed(s, p["val"].x), p["val"].y) for s, p in data.items()]
    strength, score, fit = fit_pooled_readout(z, y, val, solver=solver, seed=seed, grid=grid)
    report = {"alignment": GRID, "grid_voxels": len(union), "strength": strength, "val_mAP": score, "n_train": len(z)}
    return {s: (lambda x, s=s: fit(placed(s, x))) for s in data}, report


def run_linear(recipe, *, solver: Solver = "ridge", alignment: str | None = None, progress: bool = True) -> Path:
    """Fit the linear read-outs of every dataset of ``recipe``: one per subject, or (``alignment``) one pooled
    over each dataset's subjects on their aligned inputs; writes and returns ``RUN_DIR/metrics.json``."""
    from foundation.core.atomic import write_json
    from foundation.model.alignment import FITTED_ALIGNMENTS, JOINT_FITTERS
    from foundation.objectives.scoring import metrics_from_predictions
    from foundation.workflows.closed_form import prepare_run

    if solver not in SOLVERS:
        raise FoundationError(f"--solver must be one of {SOLVERS}, got {solver!r}")
    if alignment is not None and alignment not in (*FITTED_ALIGNMENTS, GRID):
        raise FoundationError(f"--alignment must be one of {(*FITTED_ALIGNMENTS, GRID)}, got {alignment!r}")
    what = solver if alignment is None else f"{'grid-pooled' if alignment == GRID else 'aligned'} {solver}"
    t0 = time.perf_counter()
    with prepare_run(recipe, progress=progress) as (run_dir, indices):
        preds: dict[str, dict[str, dict[str, Any]]] = {"val": {}, "test": {}}
        infos, chosen = {}, {}
        for cfg in recipe.datasets:
            index = indices[cfg.id]
            infos[cfg.id] = index.info
            subjects = list(cfg.subjects or index.data["subjects"])
            out: dict[str, dict[str, list]] = {s: {"keys": [], "subjects": [], "probs": [], "labels": []}
                                               for s in ("val", "test")}
            if alignment is None:  # one subject in memory at a time: read, fit, predict, let go
                for subject in subjects:
                    gid = f"{cfg.id}/{subject}"
                    chosen[gid] = _fit_and_predict_subject(index, cfg, subject, solver=solver, seed=recipe.seed,
                                                           what=what, out=out)
                    if progress:
                        c = chosen[gid]
                        print(f"{gid}: {solver} {'alpha' if solver == 'ridge' else 'C'}={c['strength']:.3g} "
                              f"val mAP {c['val_mAP']:.4f}", file=sys.stderr)
            else:
                data = {s: _subject_splits(index, cfg, s, what=what) for s in subjects}
                positions = None
                if alignment in (*JOINT_FITTERS, GRID):
                    if index.info.kind != "volume":
                        raise FoundationError(f"--alignment {alignment} shares a map between subjects through the "
                                              f"voxel grid; dataset {cfg.id!r} holds {index.info.kind!r} inputs")
                    positions = {s: index.voxel_positions(s) for s in subjects}
                if alignment == GRID:
                    predictors, chosen[cfg.id] = fit_pooled_grid(data, positions=positions, solver=solver,
                                                                 seed=recipe.seed)
                else:
                    predictors, chosen[cfg.id] = fit_pooled_aligned(
                        data, alignment=alignment, solver=solver, dim=recipe.model.alignment_dim, seed=recipe.seed,
                        positions=positions, share=recipe.model.alignment_share,
                        pool_gib=recipe.model.alignment_pool_gib, pool_samples=recipe.model.alignment_pool_samples)
                if progress:
                    c = chosen[cfg.id]
                    print(f"{cfg.id}: {what} over {len(data)} subjects, {'alpha' if solver == 'ridge' else 'C'}="
                          f"{c['strength']:.3g} val mAP {c['val_mAP']:.4f}", file=sys.stderr)
                for subject, parts in data.items():
                    _predict_subject(f"{cfg.id}/{subject}", parts, predictors[subject], out)
            for split in ("val", "test"):
                o = out[split]
                if o["keys"]:
                    preds[split][cfg.id] = {**o, "probs": np.concatenate(o["probs"]),
                                            "labels": np.concatenate(o["labels"])}
        results = {split: metrics_from_predictions(preds[split], infos) for split in ("val", "test")}
        grid = RIDGE_ALPHAS if solver == "ridge" else LOGISTIC_CS
        path = run_dir / "metrics.json"
        method = solver if alignment is None else f"{'grid' if alignment == GRID else 'aligned'}-{solver}"
        write_json(path, {**results, "method": method,
                          "linear": {"solver": solver, "parameter": "alpha" if solver == "ridge" else "C",
                                     "alignment": alignment, "grid": list(grid), "chosen": chosen},
                          "recipe": recipe.name, "seed": recipe.seed, "train_seconds": time.perf_counter() - t0})
        return path


def _arguments(p) -> None:
    from foundation.model.alignment import FITTED_ALIGNMENTS

    p.add_argument("--solver", choices=SOLVERS, default="ridge")
    p.add_argument("--alignment", choices=(*FITTED_ALIGNMENTS, GRID), default=None,
                   help="one read-out pooled over each dataset's subjects on their inputs aligned this way (grid: "
                        "volume datasets, the voxels placed in the shared grid, no fitted alignment)")


def main(argv: Sequence[str] | None = None) -> int:
    from foundation.workflows import closed_form

    return closed_form.main(
        argv, prog="python -m foundation.workflows.linear", description=__doc__.splitlines()[0],
        add_arguments=_arguments,
        run=lambda recipe, args, progress: run_linear(recipe, solver=args.solver, alignment=args.alignment,
                                                      progress=progress))

if __name__ == "__main__":
    sys.exit(main())
