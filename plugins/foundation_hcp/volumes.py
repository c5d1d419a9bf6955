"""Reading the cleaned MNI volumes: headers, crop, in-brain mask and one normalised run at a time.

**Memory.** A real run is ``113×136×113×~920`` float32, 6.4 GB uncompressed. :func:`read_run` never
holds it: it streams the ``.nii.gz`` in contiguous time chunks of about :data:`CHUNK_BYTES` through
nibabel's array proxy opened with ``keep_file_open=True`` — one gzip stream read once from start to
end (re-opening the file per chunk would decompress from the start every time: quadratic) — and keeps
only the subject's in-mask voxels of each chunk, as a ``(T, V)`` float32 array (1.6 GB for 920
volumes × 446k voxels, about the MNI brain at 1.6 mm). The per-voxel normalisation over time needs the
whole run, so that array is the unit of memory: one run of one subject, plus one chunk. Throughput is
bound by gzip decompression (zlib, one core); ``benchmarks/bench_hcp_shard.py`` measures it next to a
plain nibabel read of the same file.

**Mask** (no mask file is part of the layout, so it is derived from the data; ``mask:`` option):

* ``nonzero`` (default): voxels that are non-zero in the *first volume* of every one of the subject's
  runs. The HCP pipeline writes exactly 0 outside its brain mask at every time point, so one volume
  per run identifies the brain, and reading it decompresses only the first few MB of each file.
* ``nonconstant``: voxels whose time series is not constant in every run (exact, but reads every run
  once more, i.e. doubles the sharding I/O).
* ``mask_file:`` a NIfTI whose non-zero voxels are the mask, on the raw grid (cropped like the data)
  or on the cropped grid; overrides ``mask:``.

In-mask voxels that are constant over a run cannot be normalised; they become 0 (as ``nan → 0`` in the
public code) and are counted in a log message.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

import numpy as np

from foundation.core.errors import DataError

log = logging.getLogger(__name__)

#: bytes of raw float32 volumes read per chunk (4 HCP volumes). Small enough for the allocator to reuse
#: the chunk's memory (large allocations are fresh mmaps whose pages fault in on every chunk), large
#: enough that the per-chunk Python overhead is negligible; measured best among 8/24/64/256 MB.
CHUNK_BYTES = 28 << 20
#: largest magnitude float16 can hold (the shard dtype)
FLOAT16_MAX = 65504.0

Crop = tuple[slice, slice, slice]
_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


def parse_crop(text: str | None) -> Crop | None:
    """``"2:,4:-5,:-2"`` → three slices (Python slice syntax per axis, no step); ``None``/``"none"`` → no crop.

    Raises:
        ValueError: not three ``start:stop`` fields of integers.
    """
    if text is None or text.strip().lower() in ("", "none"):
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"crop {text!r} must have three comma-separated 'start:stop' fields (X, Y, Z), "
                         f"e.g. '2:,4:-5,:-2'; null disables cropping")
    out = []
    for axis, part in zip("XYZ", parts):
        m = _SLICE.match(part)
        if not m:
            raise ValueError(f"crop {text!r}: field {axis} {part.strip()!r} is not 'start:stop' (integers, either "
                             f"may be empty)")
        out.append(slice(*(int(v) if v is not None else None for v in m.groups())))
    return tuple(out)  # type: ignore[return-value]


def crop_text(crop: Crop | None) -> str:
    if crop is None:
        return "none"
    return ",".join(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}" for s in crop)


def cropped_grid(grid: tuple[int, int, int], crop: Crop | None) -> tuple[int, int, int]:
    if crop is None:
        return tuple(grid)  # type: ignore[return-value]
    return tuple(len(range(n)[s]) for n, s in zip(grid, crop))  # type: ignore[return-value]


def crop_offsets(grid: tuple[int, int, int], crop: Crop | None) -> tuple[int, int, int]:
    """Index in the raw grid of the cropped grid's voxel 0 along each axis."""
    if crop is None:
        return (0, 0, 0)
    return tuple(s.indices(n)[0] for n, s in zip(grid, crop))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class RunHeader:
    """What the NIfTI header says about one run (nothing but the header is read)."""

    path: Path
    grid: tuple[int, int, int]
    n_volumes: int
    affine: np.ndarray


def read_header(path: Path, what: str) -> RunHeader:
    """Header of one run; ``what`` names the run in errors (``subject 100610 run tfMRI_MOVIE1_7T_AP``)."""
    import nibabel as nib

    if not Path(path).is_file():
        raise DataError(f"{what}: volume file {path} not found (the run's cleaned MNI volumes, *_hp2000_clean.nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise DataError(f"{what}: {path} could not be read as NIfTI: {type(exc).__name__}: {exc}") from exc
    shape = tuple(int(v) for v in img.shape)
    if len(shape) != 4 or min(shape) < 1:
        raise DataError(f"{what}: {path} has shape {shape}, expected (X, Y, Z, T) volumes over time")
    return RunHeader(path=Path(path), grid=shape[:3], n_volumes=shape[3], affine=np.asarray(img.affine))


def _open(path: Path, what: str):
    import nibabel as nib

    try:
        # keep_file_open: one gzip stream for the whole run, so sequential chunks decompress once
        return nib.load(str(path), keep_file_open=True)
    except Exception as exc:
        raise DataError(f"{what}: {path} could not be read as NIfTI: {type(exc).__name__}: {exc}") from exc


def _step(grid: tuple[int, int, int]) -> int:
    """Volumes per chunk: about CHUNK_BYTES of float32."""
    return max(1, CHUNK_BYTES // (math.prod(grid) * 4))


def _read(img, t0: int, t1: int, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(img.dataobj[..., t0:t1], dtype=np.float32)
    except Exception as exc:
        raise DataError(f"{what}: reading volumes {t0}..{t1 - 1} of {path} failed (truncated or corrupt file?): "
                        f"{type(exc).__name__}: {exc}") from exc


def _nan_error(what: str, path: Path, t: int, n_bad: int) -> DataError:
    return DataError(f"{what}: {path} has {n_bad} NaN/Inf values in the brain at volume {t} (0-based); "
                     f"re-download or fix the run")


def mask_from_file(path: Path, grid: tuple[int, int, int], crop: Crop | None) -> np.ndarray:
    """A user-given NIfTI mask (non-zero = in) on the raw or the cropped grid, as a cropped bool grid."""
    import nibabel as nib

    if not Path(path).is_file():
        raise DataError(f"mask_file {path} not found (a NIfTI brain mask on the {grid} grid)")
    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:
        raise DataError(f"mask_file {path} could not be read as NIfTI: {type(exc).__name__}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    target = cropped_grid(grid, crop)
    if data.shape == tuple(grid):
        data = data[crop] if crop is not None else data
    elif data.shape != target:
        raise DataError(f"mask_file {path} has shape {data.shape}; expected the volumes' grid {tuple(grid)} or "
                        f"the cropped grid {target}")
    return np.nan_to_num(data, nan=0.0) != 0


def derive_mask(runs: list[tuple[Path, str]], rule: str, crop: Crop | None) -> np.ndarray:
    """The subject's in-brain mask on the cropped grid, by ``rule`` (``nonzero`` or ``nonconstant``).

    Args:
        runs: ``(volume file, description for errors)`` of every run of the subject.
    """
    mask = None
    for path, what in runs:
        img = _open(path, what)
        grid = tuple(int(v) for v in img.shape[:3])
        if rule == "nonzero":
            first = _read(img, 0, 1, path, what)[..., 0]
            first = first[crop] if crop is not None else first
            in_run = first != 0
            if not in_run.any():
                raise DataError(f"{what}: {path} is 0 everywhere (in the crop) in its first volume: an all-zero "
                                f"run gives no brain mask; re-download or fix the run")
        elif rule == "nonconstant":
            lo = hi = None
            step = _step(grid)
            for t0 in range(0, img.shape[3], step):
                block = _read(img, t0, min(t0 + step, img.shape[3]), path, what)
                block = block[crop] if crop is not None else block
                bad = ~np.isfinite(block)
                if bad.any():
                    t = t0 + int(np.argwhere(bad)[0][-1])
                    raise _nan_error(what, path, t, int(bad.sum()))
                b_lo, b_hi = block.min(axis=3), block.max(axis=3)
                lo = b_lo if lo is None else np.minimum(lo, b_lo)
                hi = b_hi if hi is None else np.maximum(hi, b_hi)
            in_run = hi > lo
            if not in_run.any():
                raise DataError(f"{what}: {path} is constant over time in every voxel (in the crop): an "
                                f"all-zero or constant run gives no brain mask; re-download or fix the run")
        else:  # pragma: no cover - Options validates the rule
            raise ValueError(f"unknown mask rule {rule!r}")
        del img
        mask = in_run if mask is None else mask & in_run
    assert mask is not None
    return mask


def gather_index(mask: np.ndarray, grid: tuple[int, int, int], crop: Crop | None) -> np.ndarray:
    """Fortran-order flat positions in the *raw* grid of the mask's voxels, in ``np.flatnonzero(mask)`` order.

    A chunk ``(X, Y, Z, n)`` read by nibabel is F-contiguous, so ``reshape(-1, n, order="F").T`` is a
    C-contiguous ``(n, X*Y*Z)`` view and one ``take`` along its last axis writes the in-mask voxels of
    the ``n`` volumes straight into their rows of the run array: no cropped copy is made.
    """
    off = crop_offsets(grid, crop)
    x, y, z = (a + o for a, o in zip(np.nonzero(mask), off))  # C order of the cropped mask
    return (x + grid[0] * (y + grid[1] * z)).astype(np.int64)


@dataclasses.dataclass
class RunStats:
    """What :func:`read_run` measured: volumes, constant voxels, seconds spent."""

    n_volumes: int
    constant_voxels: int
    seconds: float


def read_run(path: Path, index: np.ndarray, grid: tuple[int, int, int], *, normalize: str,
             what: str) -> tuple[np.ndarray, RunStats]:
    """The in-mask voxels of one run over time, normalised per voxel: ``(T, V)`` float32.

    Args:
        index: :func:`gather_index` of the subject's mask (raw-grid F-order positions).
        grid: the grid every run of the dataset has (checked against the file).
        normalize: ``minmax`` (``(x - min) / (max - min)`` over the run's T volumes), ``zscore``
            (``(x - mean) / std``), or ``none``.

    Raises:
        DataError: NaN/Inf in the brain, a grid other than ``grid``, a corrupt file, or (``none``)
            values beyond the float16 range of the shards; the message names ``what`` and the file.
    """
    import time

    t_start = time.perf_counter()
    img = _open(path, what)
    shape = tuple(int(v) for v in img.shape)
    if len(shape) != 4 or shape[:3] != tuple(grid):
        raise DataError(f"{what}: {path} has shape {shape}, expected grid {tuple(grid)} (changed since the header "
                        f"check?)")
    n_t = shape[3]
    out = np.empty((n_t, len(index)), dtype=np.float32)
    step = _step(grid)
    for t0 in range(0, n_t, step):
        t1 = min(t0 + step, n_t)
        block = _read(img, t0, t1, path, what)
        rows = out[t0:t1]
        # (X, Y, Z, n) F-contiguous → (n, X*Y*Z) C-contiguous view; gather along the contiguous axis
        np.take(block.reshape(-1, t1 - t0, order="F").T, index, axis=1, out=rows)
        del block
        bad = ~np.isfinite(rows)
        if bad.any():
            raise _nan_error(what, path, t0 + int(np.argwhere(bad)[0][0]), int(bad.sum()))
    del img
    constant = _normalize(out, normalize, path, what)
    return out, RunStats(n_volumes=n_t, constant_voxels=constant, seconds=time.perf_counter() - t_start)


def _normalize(x: np.ndarray, how: str, path: Path, what: str) -> int:
    """Normalise ``x`` ``(T, V)`` in place per voxel; returns the number of constant voxels (set to 0)."""
    if how == "none":
        peak = float(np.abs(x).max(initial=0.0))
        if peak > FLOAT16_MAX:
            raise DataError(f"{what}: {path} has values up to {peak:.6g}, beyond the float16 range of the shards; "
                            f"use normalize: minmax or zscore")
        return 0
    if how == "minmax":
        lo = x.min(axis=0)
        span = x.max(axis=0) - lo
    elif how == "zscore":
        lo = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        span = x.std(axis=0, dtype=np.float64).astype(np.float32)
    else:  # pragma: no cover - Options validates it
        raise ValueError(f"unknown normalisation {how!r}")
    constant = span <= 0
    scale = np.divide(1.0, span, out=np.zeros_like(span), where=~constant)
    x -= lo
    x *= scale
    return int(constant.sum())
