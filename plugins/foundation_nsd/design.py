"""The NSD experiment design: which image each trial showed, which trials are test, the splits.

``nsd_expdesign.mat`` holds ``masterordering`` (1 × trials, 1-based positions in a subject's list of
10,000 images, the same ordering for every subject), ``subjectim`` (8 × 10000, 1-based 73k image ids
of each subject's list) and ``sharedix`` (the 1-based 73k ids of the shared images).  Trial ``t``
(0-based, counted across sessions) of subject ``s`` showed the 73k image
``subjectim[s-1, masterordering[t]-1] - 1`` (0-based ``nsdId``); it is a shared image, and so a test
trial, when ``masterordering[t] <= len(sharedix)`` (1000 in the real data; read from the file).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from foundation.core.errors import DataError
from foundation_nsd.layout import require_file

#: mixed into the recipe seed for the validation draw, so it is independent of other seeded choices
_VAL_STREAM = 0x4E5344  # "NSD"


@dataclasses.dataclass(frozen=True)
class Design:
    """Contents of ``nsd_expdesign.mat`` (all 1-based, as stored)."""

    masterordering: np.ndarray  # (n_trials,) int64
    subjectim: np.ndarray  # (n_subjects, list_len) int64
    sharedix: np.ndarray  # (n_shared,) int64
    path: Path

    @property
    def n_shared(self) -> int:
        return len(self.sharedix)


def load_design(path: Path) -> Design:
    """Read and sanity-check ``nsd_expdesign.mat``."""
    import scipy.io

    require_file(path, "NSD design file nsd_expdesign.mat")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DataError(f"NSD design file {path} is not a readable MATLAB file: {type(exc).__name__}: {exc}") from exc
    arrays = {}
    for key in ("masterordering", "subjectim", "sharedix"):
        if key not in mat:
            present = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"NSD design file {path} has no variable {key!r} (it has {present})")
        arrays[key] = np.asarray(mat[key])
    order = arrays["masterordering"].reshape(-1).astype(np.int64)
    subjectim = np.atleast_2d(arrays["subjectim"]).astype(np.int64)
    shared = arrays["sharedix"].reshape(-1).astype(np.int64)
    list_len = subjectim.shape[1]
    if order.size == 0 or order.min() < 1 or order.max() > list_len:
        raise DataError(f"NSD design file {path}: masterordering must hold 1-based positions in 1..{list_len} "
                        f"(subjectim has {list_len} columns), found {order.min(initial=0)}..{order.max(initial=0)}")
    if subjectim.min() < 1:
        raise DataError(f"NSD design file {path}: subjectim must hold 1-based image ids, found {subjectim.min()}")
    if shared.size == 0 or shared.size > list_len:
        raise DataError(f"NSD design file {path}: sharedix has {shared.size} ids for lists of {list_len} images")
    return Design(masterordering=order, subjectim=subjectim, sharedix=shared, path=path)


@dataclasses.dataclass(frozen=True)
class Trials:
    """Every trial of one subject, in order (index = running trial number within the subject)."""

    nsd_ids: np.ndarray  # (n,) int64, 0-based 73k ids
    shared: np.ndarray  # (n,) bool: shared image → test


def subject_trials(design: Design, subject: str, number: int, n_trials: int) -> Trials:
    """Map the subject's ``n_trials`` trials (all sessions present) to images."""
    if number > design.subjectim.shape[0]:
        raise DataError(f"NSD design file {design.path}: subjectim has rows for {design.subjectim.shape[0]} subjects, "
                        f"none for {subject!r}")
    if n_trials > len(design.masterordering):
        raise DataError(f"subject {subject!r} has {n_trials} trials in its betas files but {design.path} orders only "
                        f"{len(design.masterordering)} trials")
    positions = design.masterordering[:n_trials]
    nsd_ids = design.subjectim[number - 1, positions - 1] - 1
    shared = positions <= design.n_shared
    shared_ids = set((design.sharedix - 1).tolist())
    stray = sorted(set(nsd_ids[shared].tolist()) - shared_ids)
    if stray:
        raise DataError(f"NSD design file {design.path}: subject {subject!r} lists images {stray[:5]} among its first "
                        f"{design.n_shared} (shared) images, but sharedix does not contain them")
    return Trials(nsd_ids=nsd_ids, shared=shared)


def assign_splits(trials: Mapping[str, Trials], *, val_samples: int, seed: int,
                  unit: Literal["image", "trial"], repeats: Literal["separate", "average"]) -> dict[str, np.ndarray]:
    """Per subject, the split of every trial: ``"test"`` (shared images), ``"val"`` or ``"train"``.

    The validation set is drawn once over all subjects together from the non-shared trials, seeded
    by ``seed``.  With ``unit="image"`` (and always with ``repeats="average"``) the draw picks whole
    (subject, image) groups, so the repeats of an image never straddle train and validation; groups
    are taken in random order while they fit, which fills exactly ``val_samples`` samples (trials,
    or averaged images with ``repeats="average"``) unless the groups cannot add up to it.
    """
    units: list[tuple[str, np.ndarray]] = []  # (subject, trial indices) in a stable order
    for subject, tr in trials.items():
        free = np.flatnonzero(~tr.shared)
        if unit == "trial" and repeats == "separate":
            units.extend((subject, free[i:i + 1]) for i in range(len(free)))
        else:
            ids = tr.nsd_ids[free]
            order = np.argsort(ids, kind="stable")
            bounds = np.flatnonzero(np.diff(ids[order])) + 1
            groups = np.split(free[order], bounds) if len(free) else []
            groups.sort(key=lambda g: int(g[0]))
            units.extend((subject, g) for g in groups)
    sizes = np.array([1 if repeats == "average" else len(g) for _, g in units], dtype=np.int64)
    total = int(sizes.sum())
    if val_samples > total:
        raise DataError(f"options.val_samples={val_samples} exceeds the {total} non-shared samples of subjects "
                        f"{list(trials)}")
    splits = {s: np.where(tr.shared, "test", "train").astype("<U5") for s, tr in trials.items()}
    rng = np.random.default_rng([seed, _VAL_STREAM])
    taken = 0
    for k in rng.permutation(len(units)):
        if taken == val_samples:
            break
        if taken + sizes[k] <= val_samples:
            subject, group = units[k]
            splits[subject][group] = "val"
            taken += int(sizes[k])
    return splits


# ---------------------------------------------------------------------- stimulus table


@dataclasses.dataclass(frozen=True)
class StimInfo:
    """``nsdId → (cocoId, cocoSplit)`` from ``nsd_stim_info_merged.csv``."""

    coco_id: dict[int, int]
    coco_split: dict[int, str]
    path: Path

    def lookup(self, nsd_id: int) -> tuple[int, str]:
        if nsd_id not in self.coco_id:
            raise DataError(f"NSD stimulus table {self.path} has no row for nsdId {nsd_id}")
        return self.coco_id[nsd_id], self.coco_split[nsd_id]


def load_stim_info(path: Path) -> StimInfo:
    """Read the columns ``nsdId``, ``cocoId`` and ``cocoSplit`` (the first column is an unnamed index)."""
    require_file(path, "NSD stimulus table nsd_stim_info_merged.csv")
    coco_id: dict[int, int] = {}
    coco_split: dict[int, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("nsdId", "cocoId", "cocoSplit") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"NSD stimulus table {path} lacks the columns {missing} (header: {reader.fieldnames})")
        for lineno, row in enumerate(reader, 2):
            try:
                nsd = int(float(row["nsdId"]))
                coco_id[nsd] = int(float(row["cocoId"]))
            except (TypeError, ValueError):
                raise DataError(f"NSD stimulus table {path}, line {lineno}: nsdId {row['nsdId']!r} / cocoId "
                                f"{row['cocoId']!r} are not integers") from None
            coco_split[nsd] = row["cocoSplit"].strip()
    return StimInfo(coco_id=coco_id, coco_split=coco_split, path=path)


def stimulus_id(nsd_id: int) -> str:
    """The dataset-wide stimulus id of a 0-based 73k image id: ``nsd-02950``."""
    return f"nsd-{int(nsd_id):05d}"


def parse_stimulus_id(sid: str) -> int:
    head, _, digits = str(sid).partition("-")
    if head != "nsd" or not digits.isdigit():
        raise DataError(f"{sid!r} is not an NSD stimulus id (expected nsd-NNNNN)")
    return int(digits)

