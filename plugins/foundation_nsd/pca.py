"""Streaming PCA per subject per ROI group, the saved bases and :func:`project` for new scans.

The fit never holds more than one session of betas: each session's training trials are added to
one accumulator per group (:class:`CovAccumulator`: the rows themselves while they are smaller than a
scatter matrix, then a running mean and scatter matrix), and one SVD or eigendecomposition per group
gives the top components.  Tokens are the PCA scores, truncated or zero-padded to the
common dimension.  The bases are saved as ``.npz`` (no pickle) so that new scans of the same subject
can be projected into the same token space later::

    from foundation_nsd.pca import load_bases, project
    bases = load_bases("shards/nsd-<hash>/nsd_pca/subj01.npz")
    tokens = project(np.asarray(nib.load("betas_session41.nii.gz").dataobj), "subj01", bases)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from foundation.core.errors import DataError
from foundation_nsd.layout import BETA_SCALE, preprocess

FORMAT = 1


class CovAccumulator:
    """Training rows of one group, added one session at a time, summarised within a fixed memory bound.

    While the rows would take no more memory than a ``(voxels, voxels)`` float64 scatter matrix
    (``n <= 2 * voxels``), they are kept as float32 and the PCA is an SVD of the centred rows (fast
    when there are fewer trials than voxels).  Past that, they are folded into a running mean and
    scatter matrix ``Σ (x - mean)(x - mean)ᵀ`` (Chan et al.'s pairwise update, float64), and the PCA is
    an eigendecomposition.  Either way memory is at most one scatter matrix per group.
    """

    def __init__(self, n_features: int) -> None:
        self.n_features = int(n_features)
        self.n = 0
        self.rows: list[np.ndarray] | None = []
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        nb = int(x.shape[0])
        if nb == 0:
            return
        if self.rows is not None:
            if self.n + nb <= 2 * self.n_features:
                self.rows.append(np.array(x, dtype=np.float32))
                self.n += nb
                return
            self._fold()
        mean_b = x.mean(axis=0, dtype=np.float64)
        centred = np.asarray(x, dtype=np.float32) - mean_b.astype(np.float32)
        scatter_b = centred.T @ centred  # float32 product of O(1) z-scores, accumulated in float64
        total = self.n + nb
        delta = mean_b - self.mean
        self.scatter += scatter_b
        self.scatter += np.outer(delta, delta) * (self.n * nb / total)
        self.mean += delta * (nb / total)
        self.n = total

    def _fold(self) -> None:
        """Switch from kept rows to mean + scatter matrix."""
        self.mean = np.zeros(self.n_features, dtype=np.float64)
        self.scatter = np.zeros((self.n_features, self.n_features), dtype=np.float64)
        if self.n:
            rows = np.concatenate(self.rows).astype(np.float64)
            self.mean = rows.mean(axis=0)
            rows -= self.mean
            self.scatter = rows.T @ rows
        self.rows = None


def _fix_signs(vec: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest |loading| is positive (eigenvector signs are arbitrary)."""
    k = vec.shape[1]
    lead = np.abs(vec).argmax(axis=0)
    signs = np.sign(vec[lead, np.arange(k)])
    signs[signs == 0] = 1
    return vec * signs


@dataclasses.dataclass
class RoiBasis:
    """PCA of one group: ``scores = (x - mean) @ components``; ``components`` is ``(voxels, k)``."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray


def _strictest_blas_limit() -> contextlib.AbstractContextManager:
    """Run every loaded BLAS with the fewest threads any of them is limited to.

    ``build_shards`` limits BLAS to one thread, but a limit only reaches libraries already loaded
    when it is set; scipy's own OpenBLAS may be loaded later, and two unthrottled threads spinning
    against torch's make a small SVD hundreds of times slower.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    threads = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    if not threads or len(set(threads)) == 1:
        return contextlib.nullcontext()
    return threadpool_limits(limits=min(threads), user_api="blas")


def fit_basis(acc: CovAccumulator, k: int) -> RoiBasis:
    """Top ``k`` principal axes of the accumulated rows, signs fixed (largest |loading| positive).

    Consumes the accumulator (its scatter matrix is overwritten).
    """
    import scipy.linalg  # noqa: F401  (loaded before the limit is chosen, so the limit reaches it)

    with _strictest_blas_limit():
        return _fit_basis(acc, k)


def _fit_basis(acc: CovAccumulator, k: int) -> RoiBasis:
    import scipy.linalg

    v = acc.n_features
    if acc.n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {acc.n}")
    k = int(min(k, v, acc.n - 1))
    if acc.rows is not None:
        rows = np.concatenate(acc.rows).astype(np.float64)
        mean = rows.mean(axis=0)
        rows -= mean
        _, s, vt = scipy.linalg.svd(rows, full_matrices=False, overwrite_a=True, check_finite=False)
        w, vec = s[:k] ** 2, vt[:k].T
    else:
        mean, cov = acc.mean, acc.scatter
        if k < v:
            w, vec = scipy.linalg.eigh(cov, subset_by_index=[v - k, v - 1], overwrite_a=True, check_finite=False)
        else:
            w, vec = scipy.linalg.eigh(cov, overwrite_a=True, check_finite=False)
        w, vec = w[::-1], vec[:, ::-1]
        acc.scatter = None
    return RoiBasis(mean=mean.astype(np.float32), components=np.ascontiguousarray(_fix_signs(vec), dtype=np.float32),
                    explained_variance=(np.maximum(w, 0) / (acc.n - 1)).astype(np.float32))


@dataclasses.dataclass
class SubjectBases:
    """Everything needed to turn one session of a subject's betas into tokens.

    Attributes:
        subject: NSD subject id (``subj01``).
        groups: token order.
        pca_dim: token width; groups with fewer components are zero-padded.
        grid: betas grid (X, Y, Z).
        voxels: per group, flat C-order indices into ``grid``.
        bases: per group, the fitted :class:`RoiBasis`.
        zscore: whether each session is z-scored per voxel before projection.
        n_train: training trials the bases were fitted on.
    """

    subject: str
    groups: tuple[str, ...]
    pca_dim: int
    grid: tuple[int, int, int]
    voxels: dict[str, np.ndarray]
    bases: dict[str, RoiBasis]
    zscore: bool
    n_train: int

    def transform(self, group_data: Mapping[str, np.ndarray]) -> np.ndarray:
        """Tokens ``(T, n_groups, pca_dim)`` float32 from preprocessed ``(T, voxels)`` arrays per group."""
        first = group_data[self.groups[0]]
        out = np.zeros((first.shape[0], len(self.groups), self.pca_dim), dtype=np.float32)
        for g, name in enumerate(self.groups):
            b = self.bases[name]
            k = b.components.shape[1]
            out[:, g, :k] = (group_data[name] - b.mean) @ b.components
        return out

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (atomically, no pickled objects)."""
        from foundation.core.atomic import atomic_open

        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT), "subject": np.array(self.subject), "groups": np.array(self.groups, dtype=str),
            "pca_dim": np.array(self.pca_dim), "grid": np.array(self.grid), "zscore": np.array(self.zscore),
            "n_train": np.array(self.n_train), "scale": np.array(BETA_SCALE),
        }
        for g, name in enumerate(self.groups):
            b = self.bases[name]
            arrays[f"voxels_{g}"] = self.voxels[name].astype(np.int64)
            arrays[f"mean_{g}"] = b.mean
            arrays[f"components_{g}"] = b.components
            arrays[f"explained_variance_{g}"] = b.explained_variance
        with atomic_open(path) as fh:
            np.savez(fh, **arrays)


def load_bases(path: str | Path) -> SubjectBases:
    """Read bases written by :meth:`SubjectBases.save` (``<shards>/nsd_pca/<subject>.npz``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != FORMAT:
                raise DataError(f"PCA bases {path} have format {int(z['format'])}, this code reads {FORMAT}")
            groups = tuple(str(g) for g in z["groups"])
            voxels, bases = {}, {}
            for g, name in enumerate(groups):
                voxels[name] = z[f"voxels_{g}"]
                bases[name] = RoiBasis(mean=z[f"mean_{g}"], components=z[f"components_{g}"],
                                       explained_variance=z[f"explained_variance_{g}"])
            return SubjectBases(subject=str(z["subject"]), groups=groups, pca_dim=int(z["pca_dim"]),
                                grid=tuple(int(n) for n in z["grid"]), voxels=voxels, bases=bases,
                                zscore=bool(z["zscore"]), n_train=int(z["n_train"]))
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"PCA bases {path} are unreadable: {type(exc).__name__}: {exc}") from exc


def project(betas_session: np.ndarray, subject: str, bases: SubjectBases | str | Path) -> np.ndarray:
    """Tokens ``(T, n_groups, pca_dim)`` of one new session of ``subject``, in the space of the shards.

    ``betas_session`` is the session as stored in the NIfTI file, ``(X, Y, Z, T)`` in file units
    (int16 × 300 in NSD: e.g. ``np.asarray(nib.load(path).dataobj)``); for an HDF5 file pass
    ``f["betas"][()].T``.  It is scaled, z-scored per voxel (if the bases were fitted that way) and
    projected exactly as the shards were.
    """
    if not isinstance(bases, SubjectBases):
        bases = load_bases(bases)
    if bases.subject != subject:
        raise DataError(f"PCA bases of subject {bases.subject!r} cannot project a session of {subject!r}")
    arr = np.asarray(betas_session)
    if arr.ndim != 4 or tuple(arr.shape[:3]) != tuple(bases.grid):
        raise DataError(f"session of {subject!r} has shape {arr.shape}; the bases expect (X, Y, Z, T) with grid "
                        f"{tuple(bases.grid)}")
    order = list(bases.groups)
    allvox = np.concatenate([bases.voxels[g] for g in order])
    x, y, z = np.unravel_index(allvox, bases.grid)
    data = np.ascontiguousarray(arr[x, y, z, :].T, dtype=np.float32)  # (T, V)
    preprocess(data, zscore=bases.zscore, where=f"session of {subject!r} given to project()")
    bounds = np.cumsum([0] + [len(bases.voxels[g]) for g in order])
    return bases.transform({g: data[:, bounds[i]:bounds[i + 1]] for i, g in enumerate(order)})
