"""Where the NSD files live and how to read them, exactly as a user has them after download.

Paths (``docs/DATA_LAYOUTS.md``, root = the user's ``NSD/`` folder)::

    nsddata_betas/ppdata/subjNN/<resolution>/<betas_dir>/betas_sessionSS.{nii.gz,hdf5}
    nsddata/ppdata/subjNN/<resolution>/roi/{,lh.,rh.}<atlas>.nii.gz
    nsddata/freesurfer/subjNN/label/<atlas>.mgz.ctab
    nsddata/experiments/nsd/nsd_expdesign.mat
    nsddata/experiments/nsd/nsd_stim_info_merged.csv
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5
    <coco_annotations>/{instances,captions}_{train,val}2017.json

Betas readers return only the requested voxels of one session, ``(T, V)`` float32 in raw file units
(int16 in the real data, ``value / 300`` = % signal change); :func:`preprocess` scales, checks for
NaN and z-scores.  Nothing is sized by assumption: trials per session and the grid come from each
file's header.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import numpy as np

from foundation.core.errors import DataError

BetasFormat = Literal["nifti", "hdf5"]

#: NSD stores betas as int16 percent signal change times 300
BETA_SCALE = 300.0
#: bytes of raw betas decoded per read while streaming a session (bounds the reader's extra memory)
READ_BLOCK_BYTES = 64 * 2**20

SUBJECT_RE = re.compile(r"^subj(\d{2})$")
_SESSION_RE = {
    "nifti": re.compile(r"^betas_session(\d+)\.nii(?:\.gz)?$"),
    "hdf5": re.compile(r"^betas_session(\d+)\.hdf5$"),
}
_SESSION_GLOB = {"nifti": "betas_session*.nii*", "hdf5": "betas_session*.hdf5"}


class NSDFileMissing(DataError, FileNotFoundError):
    """A file of the NSD layout is absent; the message names the path and what the file is."""


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else :class:`NSDFileMissing` naming it and what it is."""
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (its folder {path.parent} does not exist either)"
        raise NSDFileMissing(f"{what} not found: {path}{hint}")
    return path


def subject_number(subject: str) -> int:
    """``"subj03"`` → 3; anything else is a :class:`DataError`."""
    m = SUBJECT_RE.match(subject)
    if not m or int(m.group(1)) < 1:
        raise DataError(f"NSD subject id {subject!r} is not of the form subjNN (subj01 .. subj08)")
    return int(m.group(1))


@dataclasses.dataclass(frozen=True)
class Session:
    """One betas file: session number (1-based), path, trials it holds and its voxel grid (X, Y, Z)."""

    number: int
    path: Path
    n_trials: int
    grid: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class NSDLayout:
    """Paths of one NSD download; every method only builds paths or reads headers."""

    root: Path
    betas_dir: str = "betas_fithrf_GLMdenoise_RR"
    resolution: str = "func1pt8mm"
    atlas: str = "Kastner2015"
    betas_format: BetasFormat = "nifti"
    coco_annotations: Path | None = None

    # ------------------------------------------------------------------ betas
    @property
    def betas_root(self) -> Path:
        return self.root / "nsddata_betas" / "ppdata"

    def betas_folder(self, subject: str) -> Path:
        return self.betas_root / subject / self.resolution / self.betas_dir

    def discover_subjects(self) -> list[str]:
        """Every ``subjNN`` folder under ``nsddata_betas/ppdata``, sorted."""
        if not self.betas_root.is_dir():
            raise NSDFileMissing(f"NSD betas folder not found: {self.betas_root} (expected the subject folders "
                                 f"subj01 .. subj08 of the NSD download there; is `root` the NSD folder?)")
        subjects = sorted(p.name for p in self.betas_root.iterdir() if p.is_dir() and SUBJECT_RE.match(p.name))
        if not subjects:
            raise DataError(f"no subject folders subjNN in the NSD betas folder {self.betas_root}")
        return subjects

    def sessions(self, subject: str) -> list[Session]:
        """The subject's betas files in session order, with trial count and grid read from each header.

        Sessions must run 1, 2, ... N without gaps: the trial → image mapping counts trials across
        sessions, so a missing session in the middle would silently shift every later trial.
        """
        folder = self.betas_folder(subject)
        if not folder.is_dir():
            raise NSDFileMissing(f"NSD betas folder of subject {subject!r} not found: {folder}")
        pattern = _SESSION_RE[self.betas_format]
        found: dict[int, Path] = {}
        for path in sorted(folder.glob(_SESSION_GLOB[self.betas_format])):
            m = pattern.match(path.name)
            if m is None:
                continue
            number = int(m.group(1))
            if number in found:
                raise DataError(f"subject {subject!r}: session {number} has two betas files, {found[number].name} "
                                f"and {path.name}, in {folder}")
            found[number] = path
        if not found:
            other = "hdf5" if self.betas_format == "nifti" else "nifti"
            extra = (f"; it holds {other} betas files: set options.betas_format: {other}"
                     if any(_SESSION_RE[other].match(p.name) for p in folder.iterdir()) else "")
            raise DataError(f"subject {subject!r} has no sessions: no {self.betas_format} betas files "
                            f"({_SESSION_GLOB[self.betas_format]}) in {folder}{extra}")
        numbers = sorted(found)
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        if missing:
            raise DataError(f"subject {subject!r}: betas sessions {missing} are missing in {folder} (found "
                            f"{numbers}); sessions must run 1..N without gaps, since trials are counted across "
                            f"sessions to find the image of each trial")
        sessions = []
        for n in numbers:
            grid, n_trials = read_header(found[n], self.betas_format)
            sessions.append(Session(number=n, path=found[n], n_trials=n_trials, grid=grid))
        first = sessions[0]
        for s in sessions[1:]:
            if s.grid != first.grid:
                raise DataError(f"subject {subject!r}: betas grid {s.grid} of {s.path} differs from grid {first.grid} "
                                f"of {first.path}")
        return sessions

    # ------------------------------------------------------------------ ROIs
    def roi_folder(self, subject: str) -> Path:
        return self.root / "nsddata" / "ppdata" / subject / self.resolution / "roi"

    def roi_files(self, subject: str) -> tuple[Path, Path, Path]:
        """``(bilateral, lh, rh)`` paths of the subject's ROI volumes (any may be absent)."""
        folder = self.roi_folder(subject)
        return (folder / f"{self.atlas}.nii.gz", folder / f"lh.{self.atlas}.nii.gz", folder / f"rh.{self.atlas}.nii.gz")

    def ctab(self, subject: str) -> Path:
        return self.root / "nsddata" / "freesurfer" / subject / "label" / f"{self.atlas}.mgz.ctab"

    # ------------------------------------------------------------------ design, stimuli
    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def stim_info(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_stim_info_merged.csv"

    @property
    def stimuli_hdf5(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    def annotation_folders(self) -> list[Path]:
        """Where the COCO annotation files are looked for, in order."""
        if self.coco_annotations is not None:
            return [self.coco_annotations]
        return [self.root / "coco" / "annotations", self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "annotations"]

    def coco_file(self, kind: Literal["instances", "captions"], split: str) -> Path:
        """``<annotations>/<kind>_<split>.json`` (``split`` as in the csv, e.g. ``train2017``)."""
        name = f"{kind}_{split}.json"
        folders = self.annotation_folders()
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        tried = ", ".join(str(f / name) for f in folders)
        raise NSDFileMissing(f"COCO {kind} annotations {name} not found (looked for {tried}); download "
                             f"annotations_trainval2017.zip from cocodataset.org and set options.coco_annotations "
                             f"to the folder holding {name}")


# ---------------------------------------------------------------------- betas readers


def read_header(path: Path, fmt: BetasFormat) -> tuple[tuple[int, int, int], int]:
    """``(grid (X, Y, Z), n_trials)`` of one betas file, from its header only."""
    if fmt == "nifti":
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise DataError(f"NSD betas file {path} is not a readable NIfTI image: {type(exc).__name__}: {exc}") from exc
        shape = tuple(int(n) for n in img.shape)
        if len(shape) != 4:
            raise DataError(f"NSD betas file {path} has shape {shape}; expected 4 axes (X, Y, Z, trials)")
        return shape[:3], shape[3]
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "betas" not in f:
                raise DataError(f"NSD betas file {path} has no dataset 'betas' (it has {sorted(f.keys())})")
            shape = tuple(int(n) for n in f["betas"].shape)
    except OSError as exc:
        raise DataError(f"NSD betas file {path} is not a readable HDF5 file: {exc}") from exc
    if len(shape) != 4:
        raise DataError(f"NSD betas file {path}: dataset 'betas' has shape {shape}; expected 4 axes "
                        f"(trials, Z, Y, X)")
    return (shape[3], shape[2], shape[1]), shape[0]


def read_betas(session: Session, voxels: np.ndarray, fmt: BetasFormat) -> np.ndarray:
    """The given voxels of one session, ``(T, V)`` float32 in file units.

    ``voxels`` are flat C-order indices into the grid ``(X, Y, Z)`` (``np.flatnonzero(mask)`` of a
    boolean ``(X, Y, Z)`` mask).  Only one block of the file is decoded at a time, so memory stays at
    the output plus :data:`READ_BLOCK_BYTES`.
    """
    voxels = np.asarray(voxels, dtype=np.int64)
    if fmt == "nifti":
        return _read_nifti(session, voxels)
    return _read_hdf5(session, voxels)


def _read_exact(fh, n: int, path: Path) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise DataError(f"NSD betas file {path} is truncated: wanted {n} more bytes of voxel data, got {len(data)}")
    return data


def _read_nifti(session: Session, voxels: np.ndarray) -> np.ndarray:
    """Stream a (gzipped) NIfTI file volume block by volume block and keep only ``voxels``.

    NIfTI data are Fortran-ordered (X fastest, trials slowest), so every trial is one contiguous
    run of X·Y·Z values: reading them in order decompresses the file exactly once, where slicing a
    nibabel proxy would reopen and re-decompress the gzip stream for every slice.
    """
    import nibabel as nib
    from nibabel.openers import ImageOpener

    path = session.path
    try:
        proxy = nib.load(str(path)).dataobj  # the proxy knows where the voxels start and how to scale them
    except Exception as exc:
        raise DataError(f"NSD betas file {path} is not a readable NIfTI image: {type(exc).__name__}: {exc}") from exc
    shape = tuple(int(n) for n in proxy.shape)
    if len(shape) != 4 or getattr(proxy, "order", "F") != "F":
        raise DataError(f"NSD betas file {path} has shape {shape} (order {getattr(proxy, 'order', '?')}); expected a "
                        f"Fortran-ordered (X, Y, Z, trials) NIfTI")
    dtype = np.dtype(proxy.dtype)
    slope, inter = float(proxy.slope), float(proxy.inter)
    grid = shape[:3]
    n_vox = int(np.prod(grid))
    # C-order index (x, y, z) → Fortran-order position within one volume
    x, y, z = np.unravel_index(voxels, grid)
    columns = np.ravel_multi_index((x, y, z), grid, order="F")
    n_trials = shape[3]
    out = np.empty((n_trials, len(voxels)), dtype=np.float32)
    per_volume = n_vox * dtype.itemsize
    block = max(1, READ_BLOCK_BYTES // per_volume)
    try:
        with ImageOpener(str(path), "rb") as fh:
            fh.seek(int(proxy.offset))
            for t0 in range(0, n_trials, block):
                n = min(block, n_trials - t0)
                raw = np.frombuffer(_read_exact(fh, n * per_volume, path), dtype=dtype).reshape(n, n_vox)
                out[t0:t0 + n] = raw[:, columns]
    except (OSError, EOFError) as exc:
        raise DataError(f"NSD betas file {path} could not be read: {type(exc).__name__}: {exc}") from exc
    if (slope, inter) != (1.0, 0.0):  # NSD sets no scaling; honour it if a converted file does
        out *= np.float32(slope)
        out += np.float32(inter)
    return out


def _read_hdf5(session: Session, voxels: np.ndarray) -> np.ndarray:
    """Read ``voxels`` from dataset ``betas`` (axes ``(T, Z, Y, X)`` in h5py), slab by slab over Z.

    Only the bounding box of the requested voxels is read, a few Z planes at a time: with NSD's
    per-voxel chunking that touches little more than the needed chunks.
    """
    import h5py

    path = session.path
    grid = session.grid
    x, y, z = (a.astype(np.int64) for a in np.unravel_index(voxels, grid))
    out = np.empty((session.n_trials, len(voxels)), dtype=np.float32)
    if len(voxels) == 0:
        return out
    y0, y1, x0, x1 = int(y.min()), int(y.max()) + 1, int(x.min()), int(x.max()) + 1
    z0, z1 = int(z.min()), int(z.max()) + 1
    try:
        with h5py.File(path, "r") as f:
            ds = f["betas"]
            plane = session.n_trials * (y1 - y0) * (x1 - x0) * ds.dtype.itemsize
            step = max(1, READ_BLOCK_BYTES // max(plane, 1))
            for zs in range(z0, z1, step):
                ze = min(zs + step, z1)
                sel = (z >= zs) & (z < ze)
                if not sel.any():
                    continue
                slab = ds[:, zs:ze, y0:y1, x0:x1]
                out[:, sel] = slab[:, z[sel] - zs, y[sel] - y0, x[sel] - x0]
    except OSError as exc:
        raise DataError(f"NSD betas file {path} could not be read: {exc}") from exc
    return out


def preprocess(raw: np.ndarray, *, zscore: bool, where: str) -> np.ndarray:
    """Scale file units to % signal change, check for NaN/Inf, z-score each voxel over the trials.

    ``raw`` is ``(T, V)`` of one session; modified in place and returned.  A voxel that is constant
    over the session (zero variance, e.g. zeros outside the brain mask) becomes all zeros; a session whose
    ROI voxels are all zero is an error (a broken file, not data).
    ``where`` names the file and session in errors.
    """
    bad = ~np.isfinite(raw)
    if bad.any():
        trials, cols = np.nonzero(bad)
        raise DataError(f"{where}: {int(bad.sum())} NaN/Inf values in ROI voxels (first at trial {int(trials[0])} of "
                        f"the session, ROI voxel {int(cols[0])}); refusing to z-score or project them")
    if raw.size and not raw.any():
        raise DataError(f"{where}: every ROI voxel is 0 in all {raw.shape[0]} trials (an all-zero session: a failed "
                        f"download or conversion?); re-download the file rather than train on zeros")
    raw /= np.float32(BETA_SCALE)
    if zscore:
        mean = raw.mean(axis=0, dtype=np.float64)
        std = raw.std(axis=0, dtype=np.float64)
        std[std < 1e-8] = np.inf  # constant voxels → 0
        raw -= mean.astype(np.float32)
        raw /= std.astype(np.float32)
    return raw
