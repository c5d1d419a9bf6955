"""ROI volumes, their colour tables (label names) and the groups that become tokens.

An NSD ROI volume holds integer labels on the functional grid: −1 = not cortex (or the other
hemisphere in an ``lh.``/``rh.`` file), 0 = cortex without a label, 1..N = a label whose name is in
``nsddata/freesurfer/subjNN/label/<atlas>.mgz.ctab``.  A *group* (one token) is a set of label names,
e.g. ``V1 = [V1v, V1d]``; names are matched case-insensitively since spellings vary across releases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from foundation.core.errors import DataError
from foundation_nsd.layout import NSDFileMissing, NSDLayout, require_file

#: the paper's ten ROI groups (Appendix A) as Kastner2015 label names, in token order
KASTNER_GROUPS: dict[str, list[str]] = {
    "V1": ["V1v", "V1d"],
    "V2": ["V2v", "V2d"],
    "V3": ["V3v", "V3d"],
    "V3ab": ["V3a", "V3b"],
    "hV4": ["hV4"],
    "VO": ["VO1", "VO2"],
    "PHC": ["PHC1", "PHC2"],
    "MT": ["TO1", "TO2"],
    "LO": ["LO1", "LO2"],
    "IPS": ["IPS0", "IPS1", "IPS2", "IPS3", "IPS4", "IPS5"],
}


def read_ctab(path: Path) -> dict[int, str]:
    """``index → name`` from a FreeSurfer colour table (``index name [R G B A]`` per line)."""
    require_file(path, "ROI colour table (label names)")
    table: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            index = int(parts[0])
        except ValueError:
            raise DataError(f"ROI colour table {path}, line {lineno}: expected `index name`, got {line.strip()!r}") from None
        if len(parts) < 2:
            raise DataError(f"ROI colour table {path}, line {lineno}: index {index} has no name")
        table[index] = parts[1]
    if not table:
        raise DataError(f"ROI colour table {path} lists no labels")
    return table


def resolve_groups(groups: Mapping[str, Sequence[str]], ctab: Mapping[int, str], ctab_path: Path) -> dict[str, list[int]]:
    """Label indices of each group; a name absent from the ctab is a :class:`DataError` listing what is there."""
    by_name: dict[str, int] = {}
    for index, name in ctab.items():
        by_name.setdefault(name.lower(), index)
    out: dict[str, list[int]] = {}
    for group, names in groups.items():
        indices = []
        for name in names:
            if name.lower() not in by_name:
                present = ", ".join(f"{i} {n}" for i, n in sorted(ctab.items()))
                raise DataError(f"ROI label {name!r} (group {group!r}) is not in the colour table {ctab_path}; it lists: "
                                f"{present}")
            indices.append(by_name[name.lower()])
        out[group] = indices
    return out


def _load_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:
        raise DataError(f"ROI volume {path} is not a readable NIfTI image: {type(exc).__name__}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"ROI volume {path} has shape {data.shape}; expected a 3-D label volume")
    if not np.isfinite(data).all():
        raise DataError(f"ROI volume {path} holds NaN/Inf labels")
    return np.rint(data).astype(np.int32)


def load_roi_volume(layout: NSDLayout, subject: str) -> tuple[np.ndarray, str]:
    """The subject's label volume and a description of the file(s) it came from.

    The bilateral ``<atlas>.nii.gz`` is used when present; otherwise ``lh.`` and ``rh.`` are combined
    (a voxel takes the label of the hemisphere where it is > 0; 0 where either says cortex; else −1).
    """
    both, lh, rh = layout.roi_files(subject)
    if both.is_file():
        return _load_labels(both), str(both)
    if lh.is_file() and rh.is_file():
        left, right = _load_labels(lh), _load_labels(rh)
        if left.shape != right.shape:
            raise DataError(f"ROI volumes {lh} {left.shape} and {rh} {right.shape} have different grids")
        clash = (left > 0) & (right > 0) & (left != right)
        if clash.any():
            raise DataError(f"ROI volumes {lh} and {rh} give {int(clash.sum())} voxels different labels")
        labels = np.where(left > 0, left, np.where(right > 0, right, np.maximum(left, right)))
        return labels, f"{lh} + {rh}"
    present = [p for p in (lh, rh) if p.is_file()]
    if present:
        absent = rh if present[0] == lh else lh
        raise NSDFileMissing(f"ROI volume {absent} not found (its other hemisphere {present[0]} is there; "
                             f"both are needed when {both.name} is absent)")
    raise NSDFileMissing(f"ROI volume of subject {subject!r} not found: looked for {both} and {lh} + {rh}")


@dataclasses.dataclass(frozen=True)
class SubjectROIs:
    """The voxels of every group of one subject.

    Attributes:
        grid: the ROI grid (X, Y, Z), equal to the betas grid.
        voxels: flat C-order grid indices of all group voxels together, sorted (what is read).
        positions: per group, the columns of ``voxels`` that belong to it (group order).
        source: the ROI file(s), for messages.
    """

    grid: tuple[int, int, int]
    voxels: np.ndarray
    positions: dict[str, np.ndarray]
    source: str

    def group_voxels(self, group: str) -> np.ndarray:
        return self.voxels[self.positions[group]]

    def counts(self) -> dict[str, int]:
        return {g: len(p) for g, p in self.positions.items()}


def subject_rois(layout: NSDLayout, subject: str, groups: Mapping[str, Sequence[str]],
                 betas_grid: tuple[int, int, int], betas_file: Path) -> SubjectROIs:
    """Resolve the groups of ``subject`` on its ROI volume and check the grid against the betas."""
    ctab_path = layout.ctab(subject)
    indices = resolve_groups(groups, read_ctab(ctab_path), ctab_path)
    labels, source = load_roi_volume(layout, subject)
    if tuple(labels.shape) != tuple(betas_grid):
        hint = ("options.resolution must be the same for both" if Path(betas_file).suffix != ".hdf5" else
                "options.resolution must be the same for both, and the HDF5 dataset 'betas' must have NSD's axis "
                "order (trials, Z, Y, X); a file written as (X, Y, Z, trials) reads with its axes reversed")
        raise DataError(f"subject {subject!r}: ROI grid {tuple(labels.shape)} of {source} does not match the betas grid "
                        f"{tuple(betas_grid)} of {betas_file} ({hint})")
    flat = labels.reshape(-1)
    masks = {}
    taken = np.zeros(flat.shape, dtype=bool)
    for group, idx in indices.items():
        mask = np.isin(flat, idx)
        if not mask.any():
            raise DataError(f"subject {subject!r}: ROI group {group!r} (labels {list(groups[group])} = {idx} of {ctab_path}) "
                            f"has no voxels in {source}")
        if (mask & taken).any():
            raise DataError(f"subject {subject!r}: ROI group {group!r} shares voxels with an earlier group "
                            f"(options.roi_groups lists a label twice)")
        taken |= mask
        masks[group] = mask
    voxels = np.flatnonzero(taken)
    positions = {g: np.searchsorted(voxels, np.flatnonzero(m)) for g, m in masks.items()}
    return SubjectROIs(grid=tuple(int(n) for n in labels.shape), voxels=voxels, positions=positions, source=source)
