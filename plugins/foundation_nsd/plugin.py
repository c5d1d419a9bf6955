"""The built-in ``nsd`` dataset plugin: the Natural Scenes Dataset read from its download layout.

Each sample is one trial (or, with ``repeats: average``, one image of one subject) as a
``(n_groups, pca_dim)`` array: one token per ROI group, the group's voxels reduced by a PCA fitted
per subject on that subject's training trials.  Labels are the 80 COCO categories of the image;
stimuli (for guidance plugins) are the NSD images and their COCO captions.  See
``docs/DATA_LAYOUTS.md`` for the files and :class:`NSDOptions` for the choices.

Registered through the ``foundation`` entry-point group, exactly as a third-party package would be.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from foundation.core.api import DatasetInfo, DatasetPlugin, Sample, Stimulus
from foundation.core.errors import DataError, RecipeError
from foundation.core.hookspecs import hookimpl
from foundation_nsd import coco
from foundation_nsd.design import (
    Design,
    StimInfo,
    Trials,
    assign_splits,
    load_design,
    load_stim_info,
    parse_stimulus_id,
    stimulus_id,
    subject_trials,
)
from foundation_nsd.layout import (
    SUBJECT_RE,
    NSDLayout,
    Session,
    preprocess,
    read_betas,
    require_file,
    subject_number,
)
from foundation_nsd.pca import CovAccumulator, SubjectBases, fit_basis
from foundation_nsd.rois import KASTNER_GROUPS, SubjectROIs, subject_rois

log = logging.getLogger(__name__)


def _default_groups() -> dict[str, list[str]]:
    return {group: list(labels) for group, labels in KASTNER_GROUPS.items()}


@dataclasses.dataclass(frozen=True)
class NSDOptions:
    """Recipe ``datasets[].options`` of the ``nsd`` plugin (``datasets[].root`` = the NSD folder).

    Attributes:
        subjects: NSD subjects to read (``[subj01, subj02]``); default every ``subjNN`` folder under
            ``nsddata_betas/ppdata``.  The validation draw spans the subjects chosen here.
        betas_format: read ``betas_sessionSS.nii.gz`` (``nifti``) or ``betas_sessionSS.hdf5``
            (``hdf5``, axes reversed in the file); both give the same tokens.
        betas_dir: betas version folder under ``<resolution>/``.
        resolution: functional space folder (``func1pt8mm``; ROI files must be in the same space).
        atlas: ROI atlas: ``roi/<atlas>.nii.gz`` (or ``lh.``/``rh.`` halves) with names in
            ``freesurfer/subjNN/label/<atlas>.mgz.ctab`` (also ``prf-visualrois``, ``streams``,
            ``nsdgeneral`` with matching ``roi_groups``).
        roi_groups: token name → ctab label names (case-insensitive) pooled into that token, in token
            order; default the paper's ten Kastner2015 groups V1, V2, V3, V3ab, hV4, VO, PHC, MT, LO, IPS.
        pca_dim: token width.  ``null`` (default, the paper): the smallest dimension available over
            all subjects and groups, where a group offers min(voxels, training trials − 1); an integer
            fixes it, zero-padding groups that offer fewer components.
        repeats: ``separate`` (default, the paper): one sample per trial; ``average``: one sample per
            image per subject, the mean of its presentations (same split by construction).
        val_samples: size of the seeded validation set, drawn over all subjects together from the
            non-shared trials (samples with ``repeats: average``); the recipe seed picks it.
        val_unit: ``image`` (default): the draw takes all presentations of a (subject, image) at once,
            so repeats of one image never sit in both train and validation; ``trial``: independent
            trials (the paper's literal wording).  ``repeats: average`` always uses ``image``.
        coco_annotations: folder holding COCO ``instances_{train,val}2017.json`` and
            ``captions_{train,val}2017.json`` (relative paths are taken from the root); default
            ``<root>/coco/annotations``, then ``<root>/nsddata_stimuli/stimuli/nsd/annotations``.
        zscore: z-score every voxel within each session (over all trials of the session, as is usual
            for NSD) before the PCA.
    """

    subjects: list[str] | None = None
    betas_format: Literal["nifti", "hdf5"] = "nifti"
    betas_dir: str = "betas_fithrf_GLMdenoise_RR"
    resolution: str = "func1pt8mm"
    atlas: str = "Kastner2015"
    roi_groups: dict[str, list[str]] = dataclasses.field(default_factory=_default_groups)
    pca_dim: int | None = None
    repeats: Literal["separate", "average"] = "separate"
    val_samples: int = 1000
    val_unit: Literal["image", "trial"] = "image"
    coco_annotations: str | None = None
    zscore: bool = True

    def __post_init__(self) -> None:
        if self.subjects is not None:
            if not self.subjects:
                raise ValueError("subjects: give at least one subject (or null for all)")
            bad = [s for s in self.subjects if not isinstance(s, str) or not SUBJECT_RE.match(s)]
            if bad:
                raise ValueError(f"subjects: {bad} are not NSD subject ids of the form subjNN (subj01 .. subj08)")
            if len(set(self.subjects)) != len(self.subjects):
                raise ValueError(f"subjects: duplicates in {self.subjects}")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise ValueError(f"pca_dim must be a positive integer or null (auto), got {self.pca_dim}")
        if self.val_samples < 0:
            raise ValueError(f"val_samples must be >= 0, got {self.val_samples}")
        if not self.roi_groups:
            raise ValueError("roi_groups: give at least one group")
        for group, labels in self.roi_groups.items():
            if not labels:
                raise ValueError(f"roi_groups.{group}: lists no ctab label names")


@dataclasses.dataclass
class _Subject:
    name: str
    sessions: list[Session]
    offsets: list[int]  # first trial index of each session
    rois: SubjectROIs
    trials: Trials
    splits: np.ndarray  # (n_trials,) "train" | "val" | "test"
    available: dict[str, int]  # PCA components each group can offer

    @property
    def n_train(self) -> int:
        return int((self.splits == "train").sum())


@dataclasses.dataclass
class _State:
    subjects: dict[str, _Subject]
    design: Design
    categories: list[tuple[int, str]]
    pca_dim: int
    info: DatasetInfo


class NSDDataset(DatasetPlugin):
    """Natural Scenes Dataset: ROI betas → one PCA token per ROI group, 80 COCO labels, NSD images."""

    name = "nsd"
    Options = NSDOptions
    description = "Natural Scenes Dataset (Allen et al. 2022) from its download: ROI-group PCA tokens, COCO labels"
    version = "1"
    seed_dependent = True  # the validation draw

    def __init__(self, options: NSDOptions, *, root: Path | None = None, seed: int = 0) -> None:
        super().__init__(options, root=root, seed=seed)
        if root is None:
            raise RecipeError("the nsd dataset plugin needs datasets[].root: the NSD download folder (holding "
                              "nsddata/, nsddata_betas/ and nsddata_stimuli/)")
        root = Path(root)
        ann = None
        if options.coco_annotations is not None:
            ann = Path(options.coco_annotations).expanduser()
            ann = ann if ann.is_absolute() else root / ann
        self.layout = NSDLayout(root=root, betas_dir=options.betas_dir, resolution=options.resolution,
                                atlas=options.atlas, betas_format=options.betas_format, coco_annotations=ann)
        self._state: _State | None = None
        self._bases: dict[str, SubjectBases] = {}
        self._labels: dict[int, np.ndarray] | None = None
        self._stim_info: StimInfo | None = None
        self._captions: dict[str, dict[int, list[str]]] = {}
        self._carry: tuple[str, int, np.ndarray] | None = None  # last session read by the fit pass

    # ------------------------------------------------------------------ info (cheap: headers only)
    def _build_state(self) -> _State:
        o, layout = self.options, self.layout
        names = list(o.subjects) if o.subjects else layout.discover_subjects()
        design = load_design(layout.expdesign)
        found: dict[str, tuple[list[Session], SubjectROIs, Trials]] = {}
        for subject in names:
            number = subject_number(subject)
            sessions = layout.sessions(subject)
            rois = subject_rois(layout, subject, o.roi_groups, sessions[0].grid, sessions[0].path)
            trials = subject_trials(design, subject, number, sum(s.n_trials for s in sessions))
            found[subject] = (sessions, rois, trials)
        splits = assign_splits({s: t for s, (_, _, t) in found.items()}, val_samples=o.val_samples, seed=self.seed,
                               unit=o.val_unit, repeats=o.repeats)
        subjects: dict[str, _Subject] = {}
        for subject, (sessions, rois, trials) in found.items():
            offsets = np.cumsum([0] + [s.n_trials for s in sessions])[:-1].tolist()
            sub = _Subject(subject, sessions, offsets, rois, trials, splits[subject], {})
            if sub.n_train < 2:
                raise DataError(f"subject {subject!r} has {sub.n_train} training trials (of {len(trials.nsd_ids)}; "
                                f"{int(trials.shared.sum())} show shared test images, {int((sub.splits == 'val').sum())} "
                                f"went to validation); the PCA needs at least 2: lower options.val_samples")
            sub.available = {g: int(min(n, sub.n_train - 1)) for g, n in rois.counts().items()}
            subjects[subject] = sub
        floor = min(min(s.available.values()) for s in subjects.values())
        pca_dim = o.pca_dim if o.pca_dim is not None else floor
        categories = self._categories()
        counts = {s: self._sample_counts(sub) for s, sub in subjects.items()}
        extra = {
            "source": "NSD (Allen et al. 2022) + COCO 2017 annotations",
            "betas": f"{o.betas_dir} ({o.betas_format}, {o.resolution})",
            "atlas": o.atlas,
            "roi_groups": {g: list(v) for g, v in o.roi_groups.items()},
            "pca_dim": pca_dim,
            "pca_dim_mode": "auto (smallest available)" if o.pca_dim is None else "fixed",
            "pca_available": {s: sub.available for s, sub in subjects.items()},
            "pca_fit": "per subject and group on training trials only; bases in nsd_pca/<subject>.npz",
            "voxels": {s: sub.rois.counts() for s, sub in subjects.items()},
            "sessions": {s: len(sub.sessions) for s, sub in subjects.items()},
            "trials": {s: len(sub.trials.nsd_ids) for s, sub in subjects.items()},
            "samples": counts,
            "repeats": o.repeats,
            "val_samples": int(sum(c["val"] for c in counts.values())),
            "val_unit": "image" if o.repeats == "average" else o.val_unit,
            "zscore": o.zscore,
            "test": "shared images (masterordering <= len(sharedix))",
            "stimulus_ids": "nsd-<0-based 73k id, 5 digits>",
        }
        info = DatasetInfo(kind="roi", label_names=tuple(n for _, n in categories), subjects=tuple(subjects),
                           token_shape=(len(o.roi_groups), int(pca_dim)), token_names=tuple(o.roi_groups),
                           extra=extra)
        return _State(subjects=subjects, design=design, categories=categories, pca_dim=int(pca_dim), info=info)

    def _sample_counts(self, sub: _Subject) -> dict[str, int]:
        if self.options.repeats == "separate":
            return {k: int((sub.splits == k).sum()) for k in ("train", "val", "test")}
        return {k: len(set(sub.trials.nsd_ids[sub.splits == k].tolist())) for k in ("train", "val", "test")}

    def _categories(self) -> list[tuple[int, str]]:
        try:
            path = self.layout.coco_file("instances", "train2017")
        except DataError as missing_train:
            try:
                path = self.layout.coco_file("instances", "val2017")
            except DataError:
                raise missing_train from None
        return coco.read_categories(path)

    def state(self) -> _State:
        if self._state is None:
            self._state = self._build_state()
        return self._state

    def info(self) -> DatasetInfo:
        return self.state().info

    def _subject(self, subject: str) -> _Subject:
        st = self.state()
        if subject not in st.subjects:
            raise DataError(f"nsd dataset has no subject {subject!r} (subjects: {list(st.subjects)})")
        return st.subjects[subject]

    # ------------------------------------------------------------------ betas → tokens
    def _read(self, sub: _Subject, session: Session) -> np.ndarray:
        if self._carry is not None and self._carry[:2] == (sub.name, session.number):
            data = self._carry[2]
            self._carry = None
            return data
        raw = read_betas(session, sub.rois.voxels, self.options.betas_format)
        return preprocess(raw, zscore=self.options.zscore,
                          where=f"NSD betas file {session.path} (subject {sub.name!r}, session {session.number})")

    def fit_pca(self, subject: str) -> SubjectBases:
        """Fit (or return the cached) PCA bases of ``subject`` on its training trials, one session at a time."""
        if subject in self._bases:
            return self._bases[subject]
        from tqdm.auto import tqdm

        st, sub = self.state(), self._subject(subject)
        groups = list(self.options.roi_groups)
        accs = {g: CovAccumulator(len(sub.rois.positions[g])) for g in groups}
        # Backwards, so the session read last (session 1) is reused as the first of the projection pass.
        order = list(zip(sub.sessions, sub.offsets))[::-1]
        for session, offset in tqdm(order, desc=f"nsd/{subject} PCA fit", unit="session", leave=False, disable=None):
            rows = np.flatnonzero(sub.splits[offset:offset + session.n_trials] == "train")
            data = self._read(sub, session)
            for g in groups:
                accs[g].add(data[np.ix_(rows, sub.rois.positions[g])])
            self._carry = (subject, session.number, data)
        bases = {}
        for g in groups:
            k = min(st.pca_dim, sub.available[g])
            bases[g] = fit_basis(accs[g], k)
        result = SubjectBases(subject=subject, groups=tuple(groups), pca_dim=st.pca_dim, grid=sub.rois.grid,
                              voxels={g: sub.rois.group_voxels(g) for g in groups}, bases=bases,
                              zscore=self.options.zscore, n_train=sub.n_train)
        self._bases[subject] = result
        return result

    def _session_tokens(self, sub: _Subject, session: Session, bases: SubjectBases) -> np.ndarray:
        data = self._read(sub, session)
        return bases.transform({g: data[:, sub.rois.positions[g]] for g in bases.groups})

    # ------------------------------------------------------------------ labels
    def _stim(self) -> StimInfo:
        if self._stim_info is None:
            self._stim_info = load_stim_info(self.layout.stim_info)
        return self._stim_info

    def _image_labels(self) -> dict[int, np.ndarray]:
        """Multi-hot labels of every image any selected subject saw (each COCO file parsed once)."""
        if self._labels is not None:
            return self._labels
        st, stim = self.state(), self._stim()
        position = {cid: i for i, (cid, _) in enumerate(st.categories)}
        needed = sorted({int(i) for sub in st.subjects.values() for i in np.unique(sub.trials.nsd_ids)})
        by_split: dict[str, list[tuple[int, int]]] = {}
        for nsd in needed:
            coco_id, split = stim.lookup(nsd)
            by_split.setdefault(split, []).append((nsd, coco_id))
        labels: dict[int, np.ndarray] = {}
        for split, pairs in sorted(by_split.items()):
            path = self.layout.coco_file("instances", split)
            per_image, categories = coco.read_instance_categories(path)
            if categories != st.categories:
                raise DataError(f"COCO categories of {path} differ from those the label names were taken from "
                                f"({len(categories)} vs {len(st.categories)} categories)")
            empty = 0
            for nsd, coco_id in pairs:
                vec = np.zeros(len(position), dtype=np.uint8)
                cats = per_image.get(coco_id, ())
                for cid in cats:
                    if cid not in position:
                        raise DataError(f"COCO annotations {path}: image {coco_id} has category id {cid}, not in its "
                                        f"category list")
                    vec[position[cid]] = 1
                empty += not cats
                labels[nsd] = vec
            if empty:
                log.info("nsd: %d of %d images from %s have no instance annotations (all-zero labels)",
                         empty, len(pairs), path.name)
        self._labels = labels
        return labels

    # ------------------------------------------------------------------ the contract
    def samples(self, subject: str) -> Iterator[Sample]:
        sub = self._subject(subject)
        bases = self.fit_pca(subject)
        labels = self._image_labels()
        ids, splits = sub.trials.nsd_ids, sub.splits
        if self.options.repeats == "separate":
            for session, offset in zip(sub.sessions, sub.offsets):
                tokens = self._session_tokens(sub, session, bases)
                for j in range(session.n_trials):
                    t = offset + j
                    nsd = int(ids[t])
                    yield Sample(subject=subject, index=t, split=str(splits[t]), stimulus=stimulus_id(nsd),
                                 fmri=tokens[j].copy(), labels=labels[nsd])
            return
        # average: running sums per image, emitted once its last presentation has been read
        expected = Counter(ids.tolist())
        pending: dict[int, list] = {}
        for session, offset in zip(sub.sessions, sub.offsets):
            tokens = self._session_tokens(sub, session, bases)
            for j in range(session.n_trials):
                t = offset + j
                nsd = int(ids[t])
                acc = pending.setdefault(nsd, [np.zeros_like(tokens[j], dtype=np.float64), 0, t, str(splits[t])])
                if acc[3] != splits[t]:  # cannot happen: splits are drawn per (subject, image)
                    raise DataError(f"subject {subject!r}: image {stimulus_id(nsd)} has trials in {acc[3]} and {splits[t]}")
                acc[0] += tokens[j]
                acc[1] += 1
                if acc[1] == expected[nsd]:
                    yield Sample(subject=subject, index=acc[2], split=acc[3], stimulus=stimulus_id(nsd),
                                 fmri=(acc[0] / acc[1]).astype(np.float32), labels=labels[nsd])
                    del pending[nsd]

    def _captions_of(self, split: str) -> dict[int, list[str]]:
        if split not in self._captions:
            self._captions[split] = coco.read_captions(self.layout.coco_file("captions", split))
        return self._captions[split]

    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        import h5py

        stim = self._stim()
        path = require_file(self.layout.stimuli_hdf5, "NSD stimulus images nsd_stimuli.hdf5")
        with h5py.File(path, "r") as f:
            if "imgBrick" not in f:
                raise DataError(f"NSD stimulus images {path} have no dataset 'imgBrick' (they have {sorted(f.keys())})")
            brick = f["imgBrick"]
            if brick.ndim != 4 or brick.shape[-1] != 3:
                raise DataError(f"NSD stimulus images {path}: imgBrick has shape {brick.shape}, expected (N, H, W, 3)")
            for sid in ids:
                nsd = parse_stimulus_id(sid)
                if not 0 <= nsd < brick.shape[0]:
                    raise DataError(f"NSD stimulus images {path} hold {brick.shape[0]} images; {sid!r} is out of range")
                image = np.asarray(brick[nsd])
                if image.dtype != np.uint8:
                    raise DataError(f"NSD stimulus images {path}: imgBrick has dtype {image.dtype}, expected uint8")
                coco_id, split = stim.lookup(nsd)
                captions = self._captions_of(split).get(coco_id, [])
                yield Stimulus(id=sid, image=image, text=captions[0] if captions else None,
                               extras={"captions": np.array(captions, dtype=str) if captions else np.array([], dtype="<U1"),
                                       "nsd_id": np.array(nsd), "coco_id": np.array(coco_id)})

    def artifacts(self, out_dir: Path) -> None:
        """Save each subject's PCA bases as ``out_dir/nsd_pca/<subject>.npz`` (see :mod:`foundation_nsd.pca`).

        Subjects whose samples came from an earlier, interrupted build are refitted (fit pass only).
        """
        folder = Path(out_dir) / "nsd_pca"
        for subject in self.info().subjects:
            self.fit_pca(subject).save(folder / f"{subject}.npz")
        self._carry = None


@hookimpl
def foundation_dataset_plugins() -> list[type[DatasetPlugin]]:
    return [NSDDataset]
