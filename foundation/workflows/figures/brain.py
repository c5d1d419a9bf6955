"""Where a volume dataset's grid sits in the brain: the voxel → MNI affine of its grid and the
patch-token → voxel map of the :class:`~foundation.model.adapters.VolumeAdapter`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: affines of the MNI152 grids FSL and HCP distribute (LAS storage: x decreases with i); the 1.6 mm
#: grid is the HCP 7T ``MNINonLinear`` one
MNI_AFFINES: dict[tuple[int, int, int], np.ndarray] = {
    shape: np.array([[-mm, 0, 0, 90], [0, mm, 0, -126], [0, 0, mm, -72], [0, 0, 0, 1]], dtype=float)
    for shape, mm in (((91, 109, 91), 2.0), ((113, 136, 113), 1.6), ((182, 218, 182), 1.0))
}
_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


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
