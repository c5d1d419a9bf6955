"""``foundation plot RUN_DIR``: compute what the figures need from a run directory and save them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.errors import CheckpointError, FoundationError
from foundation.objectives.losses import cosine_rsm
from foundation.objectives.scoring import is_subject_mean
from foundation.workflows.figures.attention import run_attention
from foundation.workflows.figures.brain import grid_affine, token_map_to_grid
from foundation.workflows.figures.draw import (
    DEFAULT_DPI,
    FORMATS,
    _labels,
    _short,
    compare_figure,
    readout_names,
    roi_attention_figure,
    save_figures,
    token_rsm_figure,
    training_curves_figure,
    volume_attention_figure,
)
from foundation.workflows.figures.runlogs import _common_name, _per_subject, _read_metrics, _run_name, read_curves

log = logging.getLogger("foundation.plots")


def run_figures(
    run_dir: str | Path,
    *,
    compare: str | Path | Sequence[str | Path] | None = None,
    split: str = "test",
    device: Any = "cpu",
    batch_size: int = 64,
    max_subjects: int | None = 8,
    dpi: int = DEFAULT_DPI,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every figure of a finished run: name -> Figure (see the module docstring for the names).

    Args:
        compare: another run directory, or several whose subjects are disjoint (e.g. one single-subject
            model per subject): adds ``compare_per_subject``.
        split: whose samples the attention is averaged over, and whose per-subject metrics are compared.
        max_subjects: per-subject attention figures show (and compute) the first this many subjects of
            each dataset in vocabulary order; ``None`` shows all. The token RSMs always show all.
        details: if given, filled with the numbers behind the figures (``"attention"``: dataset ->
            :class:`ReadoutAttention`; volume datasets: ``"affine"``: dataset -> ``(affine, how)``,
            ``"maps"``: dataset -> subject -> the drawn ``(X, Y, Z)`` map per readout token; ``"rsm"``,
            ``"curves"``).
    """
    import torch

    from foundation.engine.checkpoint import load_model

    run_dir = Path(run_dir)
    if split not in ("val", "test"):
        raise FoundationError(f"split must be 'val' or 'test' (metrics.json holds those), got {split!r}")
    if not (run_dir / "best").is_dir():
        raise CheckpointError(f"{run_dir / 'best'} not found: {run_dir} is not a run directory with selected weights")
    metrics = _read_metrics(run_dir)
    details = {} if details is None else details
    name = _run_name(run_dir)
    figures: dict[str, Any] = {}
    paired = None
    if compare:  # checked first: a bad comparison fails before the attention pass
        others = [Path(compare)] if isinstance(compare, (str, Path)) else [Path(c) for c in compare]
        a, b = _per_subject(metrics, split, "mAP", run_dir), {}
        for other in others:  # several runs (e.g. one single-subject model each) are merged by subject
            for subject, value in _per_subject(_read_metrics(other), split, "mAP", other).items():
                if subject in b:
                    raise FoundationError(f"cannot compare with {[str(o) for o in others]}: subject {subject} "
                                          f"is in more than one of them")
                b[subject] = value
        label = ", ".join(str(o) for o in others[:2]) + (f" … ({len(others)} runs)" if len(others) > 2 else "")
        if not set(a) & set(b):
            raise FoundationError(f"cannot compare {run_dir} with {label}: the runs share no subject "
                                  f"({sorted(a)[:3]} vs {sorted(b)[:3]})")
        other_name = _run_name(others[0]) if len(others) == 1 else _common_name(others)
        names2 = (name, other_name)
        paired = (a, b, names2 if names2[0] != names2[1] else (str(run_dir), label))

    val, train = read_curves(run_dir)
    details["curves"] = {"val": val, "train": train}
    if val or train:
        figures["training_curves"] = training_curves_figure(
            val, train, best_step=metrics.get("best_step"), chance_mAP=(metrics.get("val") or {}).get("chance_mAP"),
            title=f"{name}: training", dpi=dpi, subject_mean=is_subject_mean(metrics.get("val") or {}))
    else:
        log.warning("%s: no validation history or TensorBoard scalars; no training curves", run_dir)

    model, _ = load_model(run_dir / "best", device=device)
    names = readout_names(model.n_readout)
    details["attention"], details["affine"], details["maps"] = {}, {}, {}
    backbone = getattr(model.cfg, "backbone", "transformer")
    if backbone != "transformer":
        log.info("%s: model.backbone=%s has no attention; no attention figures", run_dir, backbone)
    for ds, info in model.infos.items() if backbone == "transformer" else ():
        subjects = [_short(g) for g in model.vocab if g.startswith(ds + "/")]
        shown = subjects if max_subjects is None else subjects[:max_subjects]
        att, index = run_attention(model, run_dir, ds, shown, split=split, batch_size=batch_size, device=device)
        details["attention"][ds] = att
        if not att.mean:
            continue
        gids = [f"{ds}/{s}" for s in shown if f"{ds}/{s}" in att.mean]
        more = f", first {len(gids)} of {len(subjects)} subjects" if len(gids) < len(subjects) else ""
        what = f"{name}: last-layer attention of the readout tokens, {ds} {split} ({model.cfg.tokens} tokens{more})"
        if info.kind == "roi":
            rois = list(info.token_names or [f"ROI {i + 1}" for i in range(info.token_shape[0])])
            if ds in getattr(model, "alignments", {}):  # the model reads aligned tokens, not ROIs
                rois = ["aligned low", "aligned high"]
            figures[f"attention_rois_{ds}"] = roi_attention_figure(
                {_short(g): att.patches(g) for g in gids}, rois, token_names=names, title=what, dpi=dpi)
        else:
            adapter = model.adapters[ds]
            affine, how = grid_affine(info.grid, info.extra)
            details["affine"][ds] = (affine, how)
            maps = details["maps"][ds] = {}
            for g in gids:
                mask = index.mask(_short(g))
                maps[_short(g)] = [np.where(mask, token_map_to_grid(row, adapter.out_grid, adapter.factor, info.grid),
                                            0.0) for row in att.patches(g)]
            figures[f"attention_volume_{ds}"] = volume_attention_figure(
                maps, affine, token_names=names, title=what, dpi=dpi,
                note=f"patch attention painted on its {adapter.factor}³-voxel block, masked with the subject's "
                     f"brain mask; grid → MNI: {how}")

    if model.cfg.tokens == "shared":
        log.info("%s: model.tokens=shared gives every subject the same tokens; no token RSM", run_dir)
    else:
        table = model.subject_tokens.weight.detach().to("cpu", torch.float64).numpy()  # (S, R, D)
        # (S, S) per readout token: the losses' cosine_rsm in float64, clipped for the colour scale
        rsms = {names[r]: np.clip(cosine_rsm(torch.from_numpy(table[:, r]), dtype=torch.float64).numpy(), -1.0, 1.0)
                for r in range(model.n_readout)}
        details["rsm"] = rsms
        figures["token_rsm"] = token_rsm_figure(rsms, _labels(model.vocab), dpi=dpi,
                                                title=f"{name}: between-subject token similarity")

    if paired is not None:
        a, b, names2 = paired
        figures["compare_per_subject"] = compare_figure(
            a, b, names=names2, metric="mAP", dpi=dpi, title=f"{split} mAP per subject: {names2[0]} vs {names2[1]}")
    return figures


def plot_run(run_dir: str | Path, *, out: str | Path | None = None,
             compare: str | Path | Sequence[str | Path] | None = None,
             split: str = "test", fmt: str = "png", device: Any = "cpu", batch_size: int = 64,
             max_subjects: int | None = 8, dpi: int = DEFAULT_DPI) -> list[Path]:
    """Make and save every figure of a finished run (default into ``RUN_DIR/plots/``); returns the files.

    See :func:`run_figures` for the arguments; ``fmt`` is ``"png"`` or ``"pdf"``.
    """
    if fmt not in FORMATS:
        raise FoundationError(f"unknown figure format {fmt!r}; choose one of {FORMATS}")
    figures = run_figures(run_dir, compare=compare, split=split, device=device, batch_size=batch_size,
                          max_subjects=max_subjects, dpi=dpi)
    return save_figures(figures, Path(out) if out is not None else Path(run_dir) / "plots", fmt=fmt)
