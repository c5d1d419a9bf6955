"""The figures of a run as pure functions: arrays and metrics in, a :class:`matplotlib.figure.Figure`
out (drawn with the Agg canvas whatever pyplot's backend is), and :func:`save_figures`.  What each
figure shows is described in :mod:`foundation.workflows.figures`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.atomic import atomic_open
from foundation.core.errors import FoundationError

FORMATS = ("png", "pdf")
DEFAULT_DPI = 150
#: readout token names by the number of readout tokens (1: MS-EMB's identity token)
READOUT_NAMES = {1: ("subject token",), 2: ("low-level token", "high-level token")}
READOUT_COLORS = ("#1f77b4", "#d62728")
LOW_HIGH = ("low", "high")


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
