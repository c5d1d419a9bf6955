"""The SRM baseline (paper Section 3.2): a shared response model, then a classifier in its space.

The shared response model (Chen et al., 2015) needs subjects that saw the *same* stimuli (HCP's
movie, the synthetic volume world): it learns an orthonormal map ``W_i`` ``(voxels_i, k)`` per
subject and a shared time course ``S`` ``(k, T)`` with ``X_i ≈ W_i S``.  We use BrainIAK's
implementation (``pip install "foundation[srm]"``: ``brainiak`` and the ``mpich`` runtime its mpi4py
needs) on each subject's training samples aligned by stimulus id, z-scored per voxel with training
statistics.  New scans of subject ``i`` go to the shared space as ``W_iᵀ x``; one multi-label
logistic regression is trained there on every subject's training samples.  The dimension ``k`` is
chosen on validation mAP (the mean over subjects, as for every run) from ``features``, by default the
paper's grid k ∈ {100, 200, …, 600}.  ``k`` cannot exceed the shared training stimuli − 1 nor any
subject's voxel count: larger values are left out of the search, and data too small for any value of
the grid (small synthetic worlds) is fitted at that limit alone.  ``metrics.json`` ``srm.searched``
lists the values actually tried.  Writes ``metrics.json`` in the schema of a training run,
so ``foundation bench`` reports it beside the other methods (method ``srm``).

    python -m foundation.workflows.srm RECIPE [key=value ...]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.core.errors import DataError, FoundationError

#: the paper's search (Section 3.2): "in intervals of 100 dimensions within the range of [100, 600]" (best: 500)
DEFAULT_FEATURES = (100, 200, 300, 400, 500, 600)


def _fit_logistic(z: np.ndarray, y: np.ndarray, *, seed: int, epochs: int = 300,
                  weight_decay: float = 1e-3) -> torch.nn.Linear:
    """Multi-label logistic regression on ``z`` ``(n, k)`` -> ``y`` ``(n, C)`` (full-batch Adam)."""
    torch.manual_seed(seed)
    x, t = torch.from_numpy(z), torch.from_numpy(y)
    model = torch.nn.Linear(x.shape[1], t.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(model(x), t).backward()
        opt.step()
    return model


def run_srm(recipe, *, features: Sequence[int] = DEFAULT_FEATURES, n_iter: int = 10,
            progress: bool = True) -> Path:
    """Fit SRM + classifier for every dataset of ``recipe``; writes and returns ``RUN_DIR/metrics.json``."""
    try:
        from brainiak.funcalign.srm import SRM
    except ImportError as exc:  # also raised when mpi4py finds no MPI library
        raise FoundationError(f"the SRM baseline needs BrainIAK: pip install 'foundation[srm]' ({exc})") from exc
    from foundation.core.atomic import write_json
    from foundation.data.splits import read_split
    from foundation.objectives.scoring import metrics_from_predictions
    from foundation.workflows.closed_form import prepare_run

    t0 = time.perf_counter()
    with prepare_run(recipe, progress=progress) as (run_dir, indices):
        preds: dict[str, dict[str, dict[str, Any]]] = {"val": {}, "test": {}}
        infos, chosen, searched = {}, {}, {}
        for cfg in recipe.datasets:
            index = indices[cfg.id]
            subjects = list(cfg.subjects or index.data["subjects"])
            infos[cfg.id] = index.info
            data = {s: {split: read_split(index, s, split) for split in ("train", "val", "test")} for s in subjects}
            common = set.intersection(*(set(data[s]["train"].stimuli) for s in subjects))
            order = sorted(common)
            if len(order) < 3:
                raise DataError(f"SRM needs training stimuli seen by every subject; in dataset {cfg.id!r} the "
                                f"{len(subjects)} subjects share {len(order)} (SRM suits a shared movie, e.g. HCP)")
            # z-score per voxel with each subject's training statistics; columns in shared stimulus order
            stats, aligned = {}, []
            for s in subjects:
                stims, x = data[s]["train"].stimuli, data[s]["train"].x
                mean, std = x.mean(0), x.std(0) + 1e-6
                stats[s] = (mean, std)
                pos = {stim: i for i, stim in enumerate(stims)}
                aligned.append(((x[[pos[o] for o in order]] - mean) / std).T)  # (voxels_s, T)
            limit = min(len(order) - 1, *(a.shape[0] for a in aligned))
            grid = sorted({k for k in features if k <= limit}) or [limit]
            searched[cfg.id] = grid
            if progress and grid != sorted(set(features)):
                print(f"{cfg.id}: SRM k ≤ {limit} (shared training stimuli − 1, voxels): searching {grid}",
                      file=sys.stderr)
            best = None
            for k in grid:
                srm = SRM(n_iter=n_iter, features=k, rand_seed=recipe.seed)
                srm.fit(aligned)

                def shared(s: str, split: str, srm=srm) -> np.ndarray:
                    i = subjects.index(s)
                    x = (data[s][split].x - stats[s][0]) / stats[s][1]
                    return (x @ srm.w_[i]).astype(np.float32)  # (n, k)

                z = np.concatenate([shared(s, "train") for s in subjects])
                y = np.concatenate([data[s]["train"].y for s in subjects])
                clf = _fit_logistic(z, y, seed=recipe.seed)
                out = {}
                for split in ("val", "test"):
                    keys, subs, probs, labels = [], [], [], []
                    for s in subjects:
                        k_, yy = data[s][split].keys, data[s][split].y
                        if not k_:
                            continue
                        with torch.no_grad():
                            probs.append(torch.sigmoid(clf(torch.from_numpy(shared(s, split)))).numpy())
                        keys += k_
                        subs += [f"{cfg.id}/{s}"] * len(k_)
                        labels.append(yy)
                    out[split] = {"keys": keys, "subjects": subs, "probs": np.concatenate(probs),
                                  "labels": np.concatenate(labels)}
                val = metrics_from_predictions({cfg.id: out["val"]}, {cfg.id: index.info})["mAP"]
                if progress:
                    print(f"{cfg.id}: SRM k={k}: val mAP {val:.4f}", file=sys.stderr)
                if best is None or val > best[0]:
                    best = (val, k, out)
            chosen[cfg.id] = {"features": best[1], "val_mAP": best[0]}
            for split in ("val", "test"):
                preds[split][cfg.id] = best[2][split]
        results = {split: metrics_from_predictions(preds[split], infos) for split in ("val", "test")}
        path = run_dir / "metrics.json"
        write_json(path, {**results, "method": "srm", "srm": {"chosen": chosen, "grid": list(features),
                                                          "searched": searched,
                                                          "n_iter": n_iter},
                          "recipe": recipe.name, "seed": recipe.seed, "train_seconds": time.perf_counter() - t0})
        return path


def main(argv: Sequence[str] | None = None) -> int:
    from foundation.workflows import closed_form

    return closed_form.main(
        argv, prog="python -m foundation.workflows.srm", description=__doc__.splitlines()[0],
        add_arguments=lambda p: p.add_argument("--features", type=int, nargs="+", default=list(DEFAULT_FEATURES)),
        run=lambda recipe, args, progress: run_srm(recipe, features=args.features, progress=progress))

if __name__ == "__main__":
    sys.exit(main())
