"""Fit the per-subject input alignments of a model (``model.alignment``) from the shards' training data.

Called by the trainer when a model with ``model.alignment != none`` is built: for pre-training, the
shared guidance basis and every subject's map (``guidance-ridge-joint``: fitted together, and the pool's
shared map kept); for fine-tuning, only the new subjects' maps (the basis, the known subjects' maps and the
shared map come from the checkpoint; a joint model's newcomers are fitted against its shared map).  Each map
sees only the training samples the run trains on (after ``datasets[].train_fraction``): never validation or
test data.
The maps are then part of the model's state dict (``model.safetensors``); :func:`export_alignments`
also writes them as one ``.npz`` per subject (no pickle) for inspection or reuse elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.errors import DataError

__all__ = ["fit_alignments", "export_alignments", "load_alignment"]


def fit_alignments(model, streams: Mapping[str, Any], subjects: Mapping[str, Sequence[str]], *,
                   fit_basis: bool, log: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Fit ``subjects`` (dataset id -> subject names) of ``model``'s aligned datasets in place.

    Args:
        model: a :class:`~foundation.model.CLIPMUSED` with ``cfg.alignment != "none"``.
        streams: dataset id -> :class:`~foundation.data.loader.DatasetStream` (its index and its
            ``train_fraction`` subset of training samples).
        subjects: the subjects to fit, per dataset.
        fit_basis: also fit the shared guidance basis from these subjects' training stimuli
            (pre-training); ``False`` keeps the model's (fine-tuning: the checkpoint's).

    Returns:
        ``"dataset/subject" -> {"alpha": …, "n": training samples used}``.
    """
    from foundation.data.splits import read_split
    from foundation.model.alignment import FITTERS, JOINT_FITTERS, guidance_bases

    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared

    # a joint alignment fits every subject of a dataset together at pre-training and keeps the pool's shared map;
    # subjects added by fine-tuning are fitted against it (the pool's training data is not part of a fine-tuning
    # run); a model saved without the shared map gives them the per-subject ridge map
    fitter = FITTERS.get(model.cfg.alignment, FITTERS["guidance-ridge"])
    report: dict[str, dict[str, float]] = {}
    data: dict[str, dict[str, tuple[Any, np.ndarray]]] = {}  # dataset -> subject -> (training split, kept rows)
    for ds, names in subjects.items():
        if ds not in model.alignments or not names:
            continue
        stream = streams[ds]
        keep = {k for keys in stream.train_keys().values() for k in keys}
        data[ds] = {}
        for s in names:
            part = read_split(stream.index, s, "train")
            rows = [i for i, k in enumerate(part.keys) if k in keep]
            if len(rows) < 3:
                raise DataError(f"{ds}/{s}: {len(rows)} training samples kept (train_fraction "
                                f"{stream.train_fraction}); an input alignment needs at least 3")
            data[ds][s] = (part, np.asarray(rows))
    if fit_basis:
        # alignment_basis=shared: one basis from every dataset's training stimuli, else one per dataset
        groups = [list(data)] if model.cfg.alignment_basis == "shared" else [[ds] for ds in data]
        for group in groups:
            seen: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
            for ds in group:
                for part, rows in data[ds].values():
                    for i in rows:
                        seen.setdefault((ds, part.stimuli[i]), (part.low[i], part.high[i]))
            basis = guidance_bases(seen, model.alignments[group[0]].dim)
            for ds in group:
                model.alignments[ds].set_basis(*basis)
    for ds, per_subject in data.items():
        alignment = model.alignments[ds]
        if model.cfg.alignment in JOINT_FITTERS and fit_basis:
            report.update(_fit_joint(model, ds, streams[ds].index, per_subject, log=log))
            continue
        shared = alignment.shared_map() if model.cfg.alignment in JOINT_FITTERS else None
        for s, (part, rows) in per_subject.items():
            gid = f"{ds}/{s}"
            targets = alignment.targets(part.low[rows], part.high[rows])
            if shared is not None:
                mean, weight, info = fit_guidance_ridge_to_shared(part.x[rows], streams[ds].index.voxel_positions(s),
                                                                  targets, shared,
                                                                  stimuli=[part.stimuli[i] for i in rows])
            else:
                mean, weight, info = fitter(part.x[rows], targets)
            alignment.set_subject(int(model.subject_index([gid])[0]), mean, weight)
            report[gid] = {**info, "n": len(rows)}
            if shared is not None:
                report[gid]["method"] = "guidance-ridge-joint (added by fine-tuning: own map around the pool's shared map)"
            elif model.cfg.alignment in JOINT_FITTERS:
                report[gid]["method"] = ("guidance-ridge (per subject: added by fine-tuning to a model saved "
                                         "without the pool's shared map)")
            if log is not None:
                log(f"{gid}: {report[gid].get('method', model.cfg.alignment)} alignment on {len(rows)} training "
                    f"samples, alpha {info['alpha']:.3g}")
    return report


def _fit_joint(model, ds: str, index, per_subject: Mapping[str, tuple[Any, np.ndarray]], *,
               log: Callable[[str], None] | None) -> dict[str, dict[str, float]]:
    """Fit every subject of volume dataset ``ds`` together
    (:func:`~foundation.model.alignment_joint.fit_pool_and_rest`: jointly as far as ``model.alignment_pool_samples``
    allows, the rest against the pool's shared map) and install the maps."""
    from foundation.model.alignment_joint import fit_pool_and_rest

    if index.info.kind != "volume":
        raise DataError(f"model.alignment={model.cfg.alignment!r} shares a map between subjects through the voxel "
                        f"grid, so it needs volume datasets; {ds!r} holds {index.info.kind!r} inputs (use "
                        f"guidance-ridge there)")
    alignment = model.alignments[ds]
    names = list(per_subject)
    xs = [per_subject[s][0].x[per_subject[s][1]] for s in names]
    positions = [index.voxel_positions(s) for s in names]
    targets = [alignment.targets(part.low[rows], part.high[rows]) for part, rows in per_subject.values()]
    stimuli = [[part.stimuli[i] for i in rows] for part, rows in per_subject.values()]
    budget = model.cfg.alignment_pool_samples
    fits, shared = fit_pool_and_rest(xs, positions, targets, budget=budget, share=model.cfg.alignment_share,
                                     stimuli=stimuli)
    if alignment.has_shared:
        alignment.set_shared(shared)
    report = {}
    for s, x, (mean, weight, info) in zip(names, xs, fits):
        gid = f"{ds}/{s}"
        alignment.set_subject(int(model.subject_index([gid])[0]), mean, weight)
        report[gid] = {**info, "n": len(x)}
        if info["pool"] != "joint":
            report[gid]["method"] = ("guidance-ridge-joint (outside the pool's sample budget, "
                                     "model.alignment_pool_samples: own map around the pool's shared map)")
    if log is not None:
        pooled = sum(info["pool"] == "joint" for _, _, info in fits)
        log(f"{ds}: {model.cfg.alignment} alignment of {pooled} subjects jointly on "
            f"{sum(len(x) for x in xs[:pooled])} training samples, share {model.cfg.alignment_share:g}, alpha "
            f"{fits[0][2]['alpha']:.3g} × mean kernel diagonal")
        if pooled < len(names):
            log(f"{ds}: the other {len(names) - pooled} subject(s) ({', '.join(names[pooled:])}) fitted against the "
                f"pool's shared map: model.alignment_pool_samples={budget} training samples; raise it (memory N², "
                f"time N³) to fit more of them jointly")
    return report


def export_alignments(model, directory: Path) -> list[Path]:
    """Write each fitted subject's map as ``directory/<dataset>/<subject>.npz`` (``mean``, ``weight``)."""
    from foundation.core.atomic import atomic_open

    paths = []
    vocab = model.vocab
    for ds, alignment in model.alignments.items():
        for row in np.flatnonzero(alignment.fitted.cpu().numpy()):
            gid = vocab[row]
            path = Path(directory) / ds / f"{gid.split('/', 1)[1]}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as fh:
                np.savez(fh, mean=alignment.mean[row].cpu().numpy(), weight=alignment.weight[row].cpu().numpy(),
                         method=np.array(model.cfg.alignment))
            paths.append(path)
    return paths


def load_alignment(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(mean (F,), weight (F, 2·k), method)`` from an exported ``.npz`` (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["mean"], z["weight"], str(z["method"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is not an exported alignment (.npz with mean, weight, method): {exc}") from exc
