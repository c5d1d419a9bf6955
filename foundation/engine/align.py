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

    Memory: one subject's training data at a time (read from the shards when its map is fitted; the guidance basis
    reads only the stimuli and their guidance features, not the inputs), except the joint alignment's pool, which is
    held together (``model.alignment_pool_gib``).

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
    from foundation.model.alignment import FITTERS, JOINT_FITTERS, guidance_bases
    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared

    # a joint alignment fits every subject of a dataset together at pre-training (as far as its memory budget
    # goes) and keeps the pool's shared map; subjects added by fine-tuning are fitted against it (the pool's
    # training data is not part of a fine-tuning run); a model saved without the shared map gives them the
    # per-subject ridge map
    fitter = FITTERS.get(model.cfg.alignment, FITTERS["guidance-ridge"])
    report: dict[str, dict[str, float]] = {}
    todo = {ds: list(names) for ds, names in subjects.items() if ds in model.alignments and names}
    kept = {ds: {s: _kept_keys(streams[ds], ds, s) for s in names} for ds, names in todo.items()}  # refuses < 3
    if fit_basis:
        # alignment_basis=shared: one basis from every dataset's training stimuli, else one per dataset
        groups = [list(todo)] if model.cfg.alignment_basis == "shared" else [[ds] for ds in todo]
        for group in groups:
            seen: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
            for ds in group:
                for s in todo[ds]:
                    part, rows = _training_part(streams[ds], s, kept[ds][s], inputs=False)  # stimuli only
                    for i in rows:
                        seen.setdefault((ds, part.stimuli[i]), (part.low[i], part.high[i]))
                    del part
            basis = guidance_bases(seen, model.alignments[group[0]].dim)
            for ds in group:
                model.alignments[ds].set_basis(*basis)
    for ds, names in todo.items():
        alignment = model.alignments[ds]
        if model.cfg.alignment in JOINT_FITTERS and fit_basis:
            report.update(_fit_joint(model, ds, streams[ds], names, [kept[ds][s] for s in names], log=log))
            continue
        shared = alignment.shared_map() if model.cfg.alignment in JOINT_FITTERS else None
        for s in names:
            gid = f"{ds}/{s}"
            part, rows = _training_part(streams[ds], s, kept[ds][s])
            targets = alignment.targets(part.low[rows], part.high[rows])
            if shared is not None:
                mean, weight, info = fit_guidance_ridge_to_shared(part.x[rows], streams[ds].index.voxel_positions(s),
                                                                  targets, shared, overwrite_inputs=True,
                                                                  stimuli=[part.stimuli[i] for i in rows])
            else:
                mean, weight, info = fitter(part.x[rows], targets)
            del part
            alignment.set_subject(int(model.subject_index([gid])[0]), mean, weight)
            report[gid] = {**info, "n": len(rows)}
            if shared is not None:
                report[gid]["method"] = "guidance-ridge-joint (added by fine-tuning: own map around the pool's shared map)"
            elif model.cfg.alignment in JOINT_FITTERS:
                report[gid]["method"] = ("guidance-ridge (per subject: added by fine-tuning to a model saved "
                                         "without the pool's shared map)")
            if log is not None:
                log(f"{gid}: {report[gid].get('method', model.cfg.alignment)} alignment on {len(rows)} training "
                    f"samples, alpha {info['alpha']:.3g}" + (f", rank {int(info['rank'])} (0: all components)"
                                                             if "rank" in info else ""))
    return report


def _kept_keys(stream, ds: str, subject: str) -> set[str]:
    """The keys of ``subject``'s training samples the run keeps (``train_fraction``), from the shard listing alone;
    refuses fewer than 3 (an alignment needs them)."""
    kept = stream.train_keys()
    keys = {k for path, _, _ in stream.index.shards("train", {subject}) for k in kept.get(str(path), ())}
    if len(keys) < 3:
        raise DataError(f"{ds}/{subject}: {len(keys)} training samples kept (train_fraction {stream.train_fraction}); "
                        f"an input alignment needs at least 3")
    return keys


def _training_part(stream, subject: str, keep: set[str], *, inputs: bool = True) -> tuple[Any, np.ndarray]:
    """``subject``'s training split read from the shards (``inputs=False``: without its fMRI inputs), and the rows
    of it whose keys are in ``keep``."""
    from foundation.data.splits import read_split

    part = read_split(stream.index, subject, "train", inputs=inputs)
    return part, np.asarray([i for i, k in enumerate(part.keys) if k in keep], dtype=np.int64)


def _fit_joint(model, ds: str, stream, names: Sequence[str], kept: Sequence[set[str]], *,
               log: Callable[[str], None] | None) -> dict[str, dict[str, float]]:
    """Fit the subjects of volume dataset ``ds`` together as far as ``model.alignment_pool_gib`` allows, the rest
    one at a time against the pool's shared map (:func:`~foundation.model.alignment_joint.fit_pool_and_rest`), and
    install the maps as they come."""
    from foundation.model.alignment_joint import fit_pool_and_rest, pool_size

    index = stream.index
    if index.info.kind != "volume":
        raise DataError(f"model.alignment={model.cfg.alignment!r} shares a map between subjects through the voxel "
                        f"grid, so it needs volume datasets; {ds!r} holds {index.info.kind!r} inputs (use "
                        f"guidance-ridge there)")
    alignment = model.alignments[ds]

    sizes = [len(keys) for keys in kept]

    def load(i: int):
        part, rows = _training_part(stream, names[i], kept[i])
        return (part.x[rows], alignment.targets(part.low[rows], part.high[rows]),
                [part.stimuli[r] for r in rows])

    budget, most = model.cfg.alignment_pool_gib, model.cfg.alignment_pool_samples
    positions = [index.voxel_positions(s) for s in names]
    if log is not None:  # before the fit: at the default budget the joint fit takes minutes
        pooled = pool_size(sizes, [len(p) for p in positions], budget, most)
        log(f"{ds}: fitting the {model.cfg.alignment} alignment of {pooled} subject(s) jointly ({sum(sizes[:pooled])} "
            f"training samples, share {model.cfg.alignment_share:g})"
            + (f", then the other {len(names) - pooled} one at a time against their shared map "
               f"(model.alignment_pool_gib={budget}, model.alignment_pool_samples={most} bound the joint fit: memory "
               f"grows with its samples × voxels and N², time with N³)" if pooled < len(names) else ""))
    pooled, shared, fits = fit_pool_and_rest(load, positions, sizes, budget_gib=budget, max_samples=most,
                                             share=model.cfg.alignment_share)
    if log is not None:
        log(f"{ds}: joint alpha {shared.alpha:.3g} × mean kernel diagonal")
    if alignment.has_shared:
        alignment.set_shared(shared)
    report = {}
    for i, mean, weight, info in fits:
        gid = f"{ds}/{names[i]}"
        alignment.set_subject(int(model.subject_index([gid])[0]), mean, weight)
        report[gid] = {**info, "n": sizes[i]}
        if info["pool"] != "joint":
            report[gid]["method"] = ("guidance-ridge-joint (outside the pool's budget, model.alignment_pool_gib / "
                                     "alignment_pool_samples: own map around the pool's shared map)")
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
