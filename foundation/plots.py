"""``foundation plot RUN_DIR``: the figures of a finished run, as a paper would show them.

Figures (one file each, written atomically into ``RUN_DIR/plots/`` unless told otherwise):

* ``training_curves`` — validation mAP / AUC over steps (the run's ``trainer_state.json`` history,
  else its TensorBoard logs) with the selected step and chance mAP marked; the training loss and its
  terms (unweighted, from the TensorBoard logs when tensorboard's event reader is importable).
* ``attention_rois_<dataset>`` (ROI datasets; paper Fig. F8 / F9) — the last layer's attention from
  each readout token (low, high; MS-EMB: the one subject token) to each ROI token, averaged over
  heads and over the subject's samples of the split; one panel per subject, low and high side by side.
* ``attention_volume_<dataset>`` (volume datasets; paper Fig. 4) — the same attention painted back
  onto the brain: a patch token of the :class:`~foundation.model.adapters.VolumeAdapter` is one cell
  of its ``out_grid``, i.e. the block ``[f·i, f·(i+1))`` per axis of the (zero-padded) input grid,
  ``f = 2 ** len(channels)`` (:func:`token_map_to_grid`); every voxel gets the attention weight of
  its patch (not divided by the patch's voxel count), the map is cropped to the grid, masked with
  the subject's brain mask from the run's shards and drawn with nilearn on the MNI152 template.
  The grid's affine comes from :func:`grid_affine`.  (The CNN's receptive field of patch ``i`` is
  centred on voxel ``f·i`` rather than the block centre, and reaches into neighbouring blocks: the
  block map is the patch partition, not a receptive-field map.)
* ``token_rsm`` (paper Fig. F7) — cosine similarity between subjects' learned low-level tokens and
  between their high-level tokens (rows of the token table); not drawn for ``model.tokens=shared``,
  where every subject has the same tokens.
* ``compare_per_subject`` (paper Fig. C5 / C6; with ``compare=``) — paired per-subject mAP of this
  run and another one (or several with disjoint subjects, e.g. one SS-ViT run per subject), from the
  ``metrics.json`` ``per_subject`` entries: bars and a scatter against the diagonal.

The ``*_figure`` functions are pure: arrays and metrics in, a :class:`matplotlib.figure.Figure` out,
drawn with the Agg canvas whatever pyplot's backend is.  :func:`plot_run` computes what they need
from a run directory (attention: the ``best/`` weights applied to the run's shards, batched, under
``torch.no_grad()``) and saves them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.atomic import atomic_open
from foundation.errors import CheckpointError, DataError, FoundationError

log = logging.getLogger("foundation.plots")

FORMATS = ("png", "pdf")
DEFAULT_DPI = 150
#: readout token names by the number of readout tokens (1: MS-EMB's identity token)
READOUT_NAMES = {1: ("subject token",), 2: ("low-level token", "high-level token")}
READOUT_COLORS = ("#1f77b4", "#d62728")
LOW_HIGH = ("low", "high")

#: affines of the MNI152 grids FSL and HCP distribute (LAS storage: x decreases with i); the 1.6 mm
#: grid is the HCP 7T ``MNINonLinear`` one
MNI_AFFINES: dict[tuple[int, int, int], np.ndarray] = {
    shape: np.array([[-mm, 0, 0, 90], [0, mm, 0, -126], [0, 0, mm, -72], [0, 0, 0, 1]], dtype=float)
    for shape, mm in (((91, 109, 91), 2.0), ((113, 136, 113), 1.6), ((182, 218, 182), 1.0))
}
_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


# =========================================================================== helpers
def _new_figure(width: float, height: float, *, dpi: int = DEFAULT_DPI, constrained: bool = True):
    """A Figure on its own Agg canvas (no pyplot, no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def readout_names(n_readout: int) -> tuple[str, ...]:
    return READOUT_NAMES.get(n_readout, tuple(f"readout token {i + 1}" for i in range(n_readout)))


def _short(gid: str) -> str:
    return gid.split("/", 1)[1] if "/" in gid else gid


def _labels(gids: Sequence[str]) -> list[str]:
    """Bare subject ids when every id is of one dataset, else the full ``dataset/subject`` ids."""
    datasets = {g.split("/", 1)[0] for g in gids}
    return [_short(g) for g in gids] if len(datasets) <= 1 else list(gids)


def _grid_shape(n: int, *, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


# =========================================================================== 1. training curves
def training_curves_figure(
    val: Mapping[str, Sequence[tuple[int, float]]],
    train: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    *,
    best_step: int | None = None,
    chance_mAP: float | None = None,
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
):
    """Validation metrics (and training loss terms) over steps.

    Args:
        val: metric name (``"mAP"``, ``"AUC"``, ...) -> ``(step, value)`` pairs.
        train: loss term (``"loss"``, ``"bce"``, ``"orth"``, ``"rsa_low"``, ``"rsa_high"``) ->
            ``(step, value)`` pairs; ``None`` or empty draws the validation panel only. Terms that
            are zero throughout (their λ is 0) are left out; the auxiliary panel is log-scaled when positive.
        best_step: the selected step (a dashed vertical line on every panel).
        chance_mAP: mAP of a random ranking (a dotted horizontal line on the validation panel).

    Returns:
        A Figure with one panel ``"validation"``, plus ``"training loss"`` (total and BCE) and
        ``"auxiliary losses (unweighted)"`` (orthogonality and RSA terms) when those are present.
    """
    train = {k: v for k, v in (train or {}).items() if len(v) and any(abs(x) > 0 for _, x in v)}
    main_terms = [k for k in ("loss", "bce") if k in train]
    aux_terms = [k for k in train if k not in ("loss", "bce", "lr")]
    panels = ["validation"] + (["training loss"] if main_terms else []) + \
        (["auxiliary losses (unweighted)"] if aux_terms else [])
    fig = _new_figure(4.0 * len(panels), 3.2, dpi=dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]

    ax = axes[0]
    for name, points in val.items():
        if len(points):
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o", markersize=3, label=f"val {name}")
    if chance_mAP is not None and math.isfinite(chance_mAP):
        ax.axhline(chance_mAP, color="grey", linestyle=":", linewidth=1, label="chance mAP")
    ax.set_title("validation")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)

    groups = [g for g in (main_terms, aux_terms) if g]
    for ax, panel, names in zip(axes[1:], panels[1:], groups):
        for name in names:
            steps, values = zip(*sorted(train[name]))
            ax.plot(steps, values, label=name)
        ax.set_title(panel)
        ax.set_ylabel("loss")
        if names is aux_terms and all(x > 0 for n in names for _, x in train[n]):
            ax.set_yscale("log")  # orthogonality and RSA terms differ by orders of magnitude
    for ax in axes:
        ax.set_xlabel("step")
        if best_step is not None and best_step >= 0:
            ax.axvline(best_step, color="k", linestyle="--", linewidth=0.8, label=f"selected (step {best_step})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


# =========================================================================== 2. ROI attention bars
def roi_attention_figure(
    attention: Mapping[str, np.ndarray],
    roi_names: Sequence[str],
    *,
    token_names: Sequence[str] | None = None,
    title: str | None = None,
    max_cols: int | None = None,
    dpi: int = DEFAULT_DPI,
):
    """Attention of each readout token over the ROI tokens, one bar panel per subject (Fig. F8/F9).

    Args:
        attention: subject label -> ``(R, M)`` mean attention of readout token ``r`` to ROI ``m``
            (the readout rows of the last layer's attention restricted to the ROI columns).
        roi_names: the ``M`` ROI names (x tick labels).
        token_names: the ``R`` readout token names (legend); default from ``R``.

    Returns:
        A Figure with one axes per subject (titled with its label), bars grouped per ROI.
    """
    subjects = list(attention)
    if not subjects:
        raise ValueError("roi_attention_figure needs at least one subject")
    n_read, m = np.asarray(attention[subjects[0]]).shape
    if len(roi_names) != m:
        raise ValueError(f"{len(roi_names)} ROI names for {m} ROI tokens")
    token_names = list(token_names or readout_names(n_read))
    if max_cols is None:
        max_cols = 4 if m <= 4 else 3 if m <= 8 else 2 if m <= 16 else 1
    rows, cols = _grid_shape(len(subjects), max_cols=max_cols)
    panel_w = max(2.8, 0.22 * m * n_read + 1.0)
    fig = _new_figure(panel_w * cols, 2.6 * rows + 0.4, dpi=dpi)
    grid = fig.subplots(rows, cols, squeeze=False, sharey=True)
    axes = list(grid.ravel())
    for ax in axes[len(subjects):]:
        fig.delaxes(ax)
    width = 0.8 / n_read
    x = np.arange(m)
    for ax, subject in zip(axes, subjects):
        values = np.asarray(attention[subject], dtype=float)
        for r in range(n_read):
            ax.bar(x + (r - (n_read - 1) / 2) * width, values[r], width, label=token_names[r],
                   color=READOUT_COLORS[r % len(READOUT_COLORS)])
        ax.set_title(subject, fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(roi_names, rotation=45 if m > 4 else 0, ha="right" if m > 4 else "center", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[: len(subjects)]:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("attention")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=n_read, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# =========================================================================== 3. volume attention maps
def token_map_to_grid(values: np.ndarray, out_grid: Sequence[int], factor: int, grid: Sequence[int]) -> np.ndarray:
    """Patch-token values -> a voxel map on the input grid.

    The :class:`~foundation.model.adapters.VolumeAdapter` pads each axis of ``grid`` up to
    ``out_grid * factor`` and reduces it by ``factor`` (``len(channels)`` stride-2 stages), then
    flattens ``out_grid`` in C order: token ``t`` with ``(i, j, k) = unravel(t, out_grid)`` covers
    the voxels ``[f·i, f·(i+1)) × [f·j, f·(j+1)) × [f·k, f·(k+1))``.  Each voxel gets its token's
    value; the padding beyond ``grid`` is cropped.

    Args:
        values: ``(M,)`` with ``M = prod(out_grid)``.

    Returns:
        ``(X, Y, Z)`` float array.
    """
    values = np.asarray(values)
    out_grid, grid = tuple(int(v) for v in out_grid), tuple(int(v) for v in grid)
    if values.shape != (math.prod(out_grid),):
        raise ValueError(f"{values.shape} token values for an out_grid {out_grid} of {math.prod(out_grid)} patches")
    if any(o * factor < g for o, g in zip(out_grid, grid)):
        raise ValueError(f"out_grid {out_grid} × {factor} does not cover the grid {grid}")
    vol = values.reshape(out_grid)
    for axis in range(3):
        vol = np.repeat(vol, factor, axis=axis)
    return vol[: grid[0], : grid[1], : grid[2]]


def mni_brain_bbox() -> tuple[np.ndarray, np.ndarray]:
    """World-space (mm) bounding box ``(low, high)`` of nilearn's bundled MNI152 brain mask (voxel edges)."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask

    mask = load_mni152_brain_mask(resolution=2)
    ijk = np.argwhere(np.asarray(mask.get_fdata()) > 0)
    corners = nib.affines.apply_affine(mask.affine, np.stack([ijk.min(0) - 0.5, ijk.max(0) + 0.5]))
    return corners.min(0), corners.max(0)


def _crop_starts(text: str | None, raw: Sequence[int]) -> tuple[int, int, int] | None:
    """Start index per axis of a ``"a:b,c:d,e:f"`` crop (Python slice syntax), ``None`` if unreadable."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return (0, 0, 0)
    parts = str(text).split(",")
    if len(parts) != 3:
        return None
    out = []
    for part, n in zip(parts, raw):
        m = _SLICE.match(part)
        if not m:
            return None
        start, stop = (int(v) if v is not None else None for v in m.groups())
        out.append(slice(start, stop).indices(int(n))[0])
    return tuple(out)  # type: ignore[return-value]


def grid_affine(grid: Sequence[int], extra: Mapping[str, Any] | None = None,
                bbox: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, str]:
    """A voxel -> MNI (mm) affine for a volume dataset's grid, and how it was chosen.

    In order:

    1. ``extra["affine"]`` (a 4×4 list a dataset plugin may record in ``index.json``);
    2. a standard MNI152 grid: ``extra["raw_grid"]`` (else ``grid``) of 91×109×91 (2 mm),
       113×136×113 (1.6 mm, HCP 7T) or 182×218×182 (1 mm) gets its FSL/HCP affine, shifted by the
       start of ``extra["crop"]`` (the HCP plugin's ``"2:,4:-5,:-2"``) when the grid is a crop;
    3. otherwise (the synthetic world, which has no real affine) a diagonal RAS affine that maps
       the grid's bounding box (voxel edges ``-0.5 … n-0.5`` per axis) onto ``bbox``, by default the
       bounding box of the MNI152 brain mask bundled with nilearn (:func:`mni_brain_bbox`): grid
       axes 0, 1, 2 become x (left→right), y (posterior→anterior), z (inferior→superior), with
       anisotropic voxels if the grid's proportions differ from the brain's.
    """
    grid = tuple(int(g) for g in grid)
    extra = dict(extra or {})
    if extra.get("affine") is not None:
        affine = np.asarray(extra["affine"], dtype=float)
        if affine.shape == (4, 4):
            return affine, "affine recorded by the dataset plugin"
    raw = tuple(int(g) for g in extra.get("raw_grid") or grid)
    if raw in MNI_AFFINES:
        starts = _crop_starts(extra.get("crop"), raw) if raw != grid else (0, 0, 0)
        if starts is not None:
            shift = np.eye(4)
            shift[:3, 3] = starts
            mm = abs(MNI_AFFINES[raw][1, 1])
            return MNI_AFFINES[raw] @ shift, f"standard MNI152 {mm:g} mm affine" + (
                f" (grid cropped {extra.get('crop')} from {raw[0]}×{raw[1]}×{raw[2]})" if raw != grid else "")
    low, high = bbox if bbox is not None else mni_brain_bbox()
    scale = (np.asarray(high, float) - np.asarray(low, float)) / np.asarray(grid, float)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scale)
    affine[:3, 3] = np.asarray(low, float) + 0.5 * scale  # centre of voxel 0
    return affine, ("no real affine: the grid's bounding box stretched onto the MNI152 brain's "
                    f"({', '.join(f'{s:.1f}' for s in scale)} mm voxels)")


def volume_attention_figure(
    maps: Mapping[str, Sequence[np.ndarray]],
    affine: np.ndarray,
    *,
    token_names: Sequence[str] | None = None,
    bg_img: Any = None,
    title: str | None = None,
    note: str | None = None,
    dpi: int = DEFAULT_DPI,
):
    """Attention maps on the MNI152 template: one row per subject, one column per readout token (Fig. 4).

    Args:
        maps: subject label -> one ``(X, Y, Z)`` map per readout token (zero outside the brain mask).
        affine: voxel -> MNI mm (:func:`grid_affine`).
        bg_img: background image; default nilearn's bundled MNI152 template (2 mm).
        note: a small line of text at the bottom (e.g. how the affine was chosen).

    Returns:
        A Figure with one frame axes per (subject, token) titled ``"<subject> · <token>"`` (nilearn
        draws its three orthogonal cuts, cut at the map's peak, and a colour bar inside each frame).
        Each column shares one colour scale, from its smallest to its largest in-brain value; the
        overlay fades from transparent at the smallest value to opaque half-way up the scale, so the
        template shows through where attention is low (zero, outside the brain, is not drawn).
    """
    import nibabel as nib
    from nilearn import plotting
    from nilearn.datasets import load_mni152_template

    subjects = list(maps)
    if not subjects:
        raise ValueError("volume_attention_figure needs at least one subject")
    n_read = len(maps[subjects[0]])
    token_names = list(token_names or readout_names(n_read))
    if bg_img is None:
        bg_img = load_mni152_template(resolution=2)
    cell_w, cell_h = 6.0, 2.2
    top, bottom = (0.6 if title else 0.1), (0.3 if note else 0.0)
    height = cell_h * len(subjects) + top + bottom
    fig = _new_figure(cell_w * n_read, height, dpi=dpi, constrained=False)
    columns = [[np.asarray(maps[s][r], dtype=np.float32) for s in subjects] for r in range(n_read)]
    vmax = [max(float(m.max()) for m in col) for col in columns]
    vmin = [min((float(m[m > 0].min()) for m in col if (m > 0).any()), default=0.0) for col in columns]
    vmin = [lo if lo < hi * (1 - 1e-6) else 0.0 for lo, hi in zip(vmin, vmax)]
    vmax = [hi if hi > 0 else 1.0 for hi in vmax]
    for row, subject in enumerate(subjects):
        for col in range(n_read):
            data = columns[col][row]
            rect = (col / n_read, (height - top - (row + 1) * cell_h) / height,
                    1 / n_read, 0.86 * cell_h / height)
            ax = fig.add_axes(rect)
            ax.set_title(f"{subject} · {token_names[col]}", fontsize=9)
            peak = np.unravel_index(int(np.argmax(data)), data.shape)
            cut = nib.affines.apply_affine(affine, np.asarray(peak, dtype=float))
            # alpha in float64, already in [0, 1] (nilearn's own float32 rescaling can overshoot 1)
            half = (vmax[col] - vmin[col]) / 2 or 1.0
            alpha = np.clip((data.astype(np.float64) - vmin[col]) / half, 0.0, 1.0) * (data > 0)
            fade = nib.Nifti1Image(alpha, affine) if alpha.min() < alpha.max() else None
            plotting.plot_stat_map(
                nib.Nifti1Image(data, affine), bg_img=bg_img, transparency=fade,
                transparency_range=None if fade is None else [0.0, 1.0], figure=fig, axes=ax,
                cut_coords=tuple(cut), display_mode="ortho", colorbar=True, cmap="inferno", symmetric_cbar=False,
                vmin=vmin[col], vmax=vmax[col], cbar_tick_format=_tick_format(vmin[col], vmax[col]), threshold=1e-12,
                resampling_interpolation="nearest", annotate=True, draw_cross=False, black_bg=False, title=None)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top", wrap=True)
    if note:
        fig.text(0.01, 0.1 / height, note, fontsize=7, color="0.3", va="bottom")
    return fig


def _tick_format(low: float, high: float) -> str:
    """The shortest ``%.Ng`` that tells ``low`` from ``high`` apart, plus one digit (nilearn rounds its
    colour-bar bounds with the tick format; equal rounded bounds break the colour bar)."""
    for digits in range(2, 10):
        if f"{low:.{digits}g}" != f"{high:.{digits}g}":
            return f"%.{digits + 1}g"
    return "%.10g"


# =========================================================================== 4. token RSMs
def cosine_rsm(tokens: np.ndarray) -> np.ndarray:
    """``(S, D)`` tokens -> ``(S, S)`` cosine similarities."""
    tokens = np.asarray(tokens, dtype=np.float64)
    unit = tokens / np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def token_rsm_figure(rsms: Mapping[str, np.ndarray], labels: Sequence[str], *, title: str | None = None,
                     dpi: int = DEFAULT_DPI):
    """Between-subject RSMs of the readout tokens as heatmaps (Fig. F7).

    Args:
        rsms: panel title (e.g. ``"low-level token"``) -> ``(S, S)`` cosine similarity matrix.
        labels: the ``S`` subject labels (tick labels on both axes).

    Returns:
        A Figure with one heatmap axes per entry plus one shared colour bar axes (range −1…1).
    """
    n = len(labels)
    side = min(9.0, max(3.0, 0.3 * n + 1.6))
    fig = _new_figure(side * len(rsms) + 0.8, side + 0.5, dpi=dpi)
    axes = fig.subplots(1, len(rsms), squeeze=False)[0]
    step = max(1, math.ceil(n / 40))  # at most ~40 tick labels per axis
    image = None
    for ax, (name, rsm) in zip(axes, rsms.items()):
        rsm = np.asarray(rsm)
        if rsm.shape != (n, n):
            raise ValueError(f"RSM {name!r} has shape {rsm.shape}, expected ({n}, {n})")
        image = ax.imshow(rsm, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
        ticks = np.arange(0, n, step)
        ax.set_xticks(ticks)
        ax.set_xticklabels([labels[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks)
        ax.set_yticklabels([labels[i] for i in ticks], fontsize=7)
        ax.set_title(name)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{rsm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(rsm[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=list(axes), label="cosine similarity", shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


# =========================================================================== 5. comparison with another run
def compare_figure(
    this: Mapping[str, float],
    other: Mapping[str, float],
    *,
    names: tuple[str, str] = ("this run", "other run"),
    metric: str = "mAP",
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
):
    """Per-subject ``metric`` of two runs: paired bars and a scatter against the diagonal (Fig. C5/C6).

    Args:
        this, other: subject id -> metric value (``metrics.json`` ``per_subject`` entries).
        names: labels of the two runs.

    Returns:
        A Figure with two axes: bars per subject (x tick labels = subjects) and the scatter
        (``other`` on x, ``this`` on y) with the identity line; the scatter's title counts the
        subjects on which this run is better.

    Raises:
        ValueError: the runs share no subject.
    """
    subjects = [s for s in this if s in other]
    if not subjects:
        raise ValueError(f"the two runs share no subject ({sorted(this)[:3]} vs {sorted(other)[:3]})")
    a = np.array([this[s] for s in subjects], dtype=float)
    b = np.array([other[s] for s in subjects], dtype=float)
    labels = _labels(subjects)
    n = len(subjects)
    fig = _new_figure(max(4.0, 0.45 * n + 1.5) + 3.6, 3.4, dpi=dpi)
    gs = fig.add_gridspec(1, 2, width_ratios=[max(4.0, 0.45 * n + 1.5), 3.6])
    ax_bar, ax_sc = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    x = np.arange(n)
    ax_bar.bar(x - 0.2, a, 0.4, label=names[0], color=READOUT_COLORS[1])
    ax_bar.bar(x + 0.2, b, 0.4, label=names[1], color="#7f7f7f")
    ax_bar.set_xticks(x)
    ax_bar.set_xticklabels(labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=7)
    ax_bar.set_ylabel(f"test {metric}")
    ax_bar.set_title(f"{metric} per subject")
    ax_bar.legend(fontsize=7, frameon=False)
    ax_bar.grid(axis="y", alpha=0.3)

    ok = np.isfinite(a) & np.isfinite(b)
    lo = float(min(a[ok].min(), b[ok].min())) if ok.any() else 0.0
    hi = float(max(a[ok].max(), b[ok].max())) if ok.any() else 1.0
    pad = 0.05 * max(hi - lo, 1e-3)
    ax_sc.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=0.8)
    ax_sc.scatter(b[ok], a[ok], s=18, color=READOUT_COLORS[1], zorder=3)
    ax_sc.set_xlim(lo - pad, hi + pad)
    ax_sc.set_ylim(lo - pad, hi + pad)
    ax_sc.set_aspect("equal")
    ax_sc.set_xlabel(f"{names[1]} {metric}")
    ax_sc.set_ylabel(f"{names[0]} {metric}")
    ax_sc.set_title(f"better on {int((a[ok] > b[ok]).sum())} of {int(ok.sum())} subjects", fontsize=9)
    ax_sc.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# =========================================================================== run data
def read_tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``log_dir`` (``tag -> sorted (step, value)``); later files
    win for a step logged twice (a resumed run). ``{}`` when tensorboard's event reader is unavailable."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except Exception:  # tensorboard not installed or broken: the curves come from trainer_state.json
        log.info("tensorboard's event reader is not importable; training loss curves are not drawn")
        return {}
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        try:
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                merged.setdefault(tag, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
        except Exception as exc:  # a truncated event file of a killed run: use what the others hold
            log.warning("cannot read %s: %s", path, exc)
    return {tag: sorted(values.items()) for tag, values in merged.items()}


def read_curves(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """``(val, train)`` curves of a run: validation from the latest checkpoint's history (else the
    TensorBoard logs), training loss terms from the TensorBoard logs."""
    from foundation.checkpoint import latest_checkpoint, read_state

    run_dir = Path(run_dir)
    scalars = read_tensorboard_scalars(run_dir / "logs") if (run_dir / "logs").is_dir() else {}
    val: dict[str, list[tuple[int, float]]] = {}
    ckpt = latest_checkpoint(run_dir)
    history = read_state(ckpt).get("history", []) if ckpt is not None else []
    for name in ("mAP", "AUC"):
        points = [(int(h["step"]), float(h[f"val_{name}"])) for h in history if f"val_{name}" in h]
        if not points:
            points = list(scalars.get(f"val/{name}", []))
        if points:
            val[name] = points
    train = {tag.split("/", 1)[1]: v for tag, v in scalars.items() if tag.startswith("train/") and tag != "train/lr"}
    return val, train


@dataclasses.dataclass
class ReadoutAttention:
    """Mean last-layer attention of the readout tokens of one dataset's subjects.

    Attributes:
        dataset: dataset id.
        n_readout: ``R``; the attention rows are the readout tokens, columns ``R:`` the patch tokens.
        mean: global subject id -> ``(R, T)`` attention of each readout token over all ``T`` tokens,
            averaged over heads and samples (each row sums to 1).
        count: global subject id -> samples averaged.
    """

    dataset: str
    n_readout: int
    mean: dict[str, np.ndarray]
    count: dict[str, int]

    def patches(self, subject: str) -> np.ndarray:
        """``(R, M)``: the attention on the patch (ROI) tokens only."""
        return self.mean[subject][:, self.n_readout:]


def readout_attention(model, dataset: str, batches: Iterable[Any], *, device: Any = "cpu",
                      voxel_index=None) -> ReadoutAttention:
    """Average the last layer's readout-token attention per subject over ``batches``.

    Args:
        model: a :class:`~foundation.model.CLIPMUSED` (put in eval mode here).
        batches: objects with ``fmri`` and ``subjects`` (global ids), e.g. loader ``Batch`` es.
        voxel_index: volume datasets: a callable ``subjects -> (B, V_max)`` positions
            (:class:`~foundation.data.voxels.VoxelIndexBank`).
    """
    import torch

    model.eval()
    r = model.n_readout
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    with torch.no_grad():
        for batch in batches:
            idx = model.subject_index(batch.subjects).to(device)
            vi = voxel_index(batch.subjects).to(device) if voxel_index is not None else None
            out = model(dataset, batch.fmri.to(device).float(), idx, voxel_index=vi, return_attention=True)
            if out.attention is None:
                raise FoundationError(f"the model of dataset {dataset!r} returned no attention (no Transformer)")
            rows = out.attention[:, :, :r, :].float().mean(1).cpu().numpy().astype(np.float64)  # (B, R, T)
            for gid, a in zip(batch.subjects, rows):
                sums[gid] = sums.get(gid, 0.0) + a
                count[gid] = count.get(gid, 0) + 1
    return ReadoutAttention(dataset, r, {g: s / count[g] for g, s in sums.items()}, count)


def run_attention(model, run_dir: Path, dataset: str, subjects: Sequence[str], *, split: str = "test",
                  batch_size: int = 64, device: Any = "cpu") -> tuple[ReadoutAttention, Any]:
    """Readout attention of ``subjects`` (bare ids) of ``dataset`` over the run's ``split`` shards.

    Returns ``(attention, shard index)``; subjects without shards in the index are left out.
    """
    from foundation.data.loader import DatasetStream
    from foundation.data.voxels import VoxelIndexBank
    from foundation.predict import run_shard_index

    index = run_shard_index(Path(run_dir), dataset,
                            needed_for=f"the attention figures of dataset {dataset!r} read its samples from")
    info, theirs = model.infos[dataset], index.info
    if (info.kind, info.token_shape, info.grid) != (theirs.kind, theirs.token_shape, theirs.grid):
        raise DataError(f"{index.root}: shards of {theirs.kind} inputs (tokens {theirs.token_shape}, grid "
                        f"{theirs.grid}) do not fit the model's dataset {dataset!r} ({info.kind}, tokens "
                        f"{info.token_shape}, grid {info.grid})")
    present = [s for s in subjects if s in index.data["subjects"]]
    if len(present) < len(subjects):
        log.warning("%s: no shards for subject(s) %s in %s; their attention is not drawn", dataset,
                    sorted(set(subjects) - set(present)), index.root)
    if not present:
        return ReadoutAttention(dataset, model.n_readout, {}, {}), index
    stream = DatasetStream(index, subjects=present)
    bank = VoxelIndexBank(index, present, device=device) if info.kind == "volume" else None
    att = readout_attention(model, dataset, stream.eval_batches(split, batch_size), device=device, voxel_index=bank)
    return att, index


def _run_name(run_dir: Path) -> str:
    return Path(run_dir).resolve().name


def _common_name(run_dirs: Sequence[Path]) -> str:
    """A label for several runs: their names' common prefix (``ss-vit-seed0-…``), else the first name + count."""
    names = [_run_name(d) for d in run_dirs]
    prefix = os.path.commonprefix(names)
    if any(len(n) > len(prefix) and n[len(prefix)] not in "-_" for n in names):  # cut at a whole word
        prefix = prefix[: max(prefix.rfind("-"), prefix.rfind("_"), 0)]
    prefix = prefix.rstrip("-_")
    return f"{prefix}-… ({len(names)} runs)" if prefix else f"{names[0]} + {len(names) - 1} runs"


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a finished run (train it to the end first)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from exc


def _per_subject(metrics: Mapping[str, Any], split: str, metric: str, where: Path) -> dict[str, float]:
    try:
        rows = metrics[split]["per_subject"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{where / 'metrics.json'} has no {split!r} per_subject metrics") from None
    return {s: float(m.get(metric, float("nan"))) for s, m in rows.items()}


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

    from foundation.checkpoint import load_model

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
            title=f"{name}: training", dpi=dpi)
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
        rsms = {names[r]: cosine_rsm(table[:, r]) for r in range(model.n_readout)}
        details["rsm"] = rsms
        figures["token_rsm"] = token_rsm_figure(rsms, _labels(model.vocab), dpi=dpi,
                                                title=f"{name}: between-subject token similarity")

    if paired is not None:
        a, b, names2 = paired
        figures["compare_per_subject"] = compare_figure(
            a, b, names=names2, metric="mAP", dpi=dpi, title=f"{split} mAP per subject: {names2[0]} vs {names2[1]}")
    return figures


def save_figures(figures: Mapping[str, Any], out: str | Path, *, fmt: str = "png", close: bool = True) -> list[Path]:
    """Write each figure to ``out/<name>.<fmt>`` atomically (at the figure's own dpi); returns the paths."""
    if fmt not in FORMATS:
        raise FoundationError(f"unknown figure format {fmt!r}; choose one of {FORMATS}")
    out = Path(out)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.{fmt}"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=fig.dpi)
        paths.append(path)
        if close:
            fig.clf()
    return paths


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
