"""The ``hcp`` dataset plugin: WU-Minn HCP 7T movie watching, read in its download layout, unchanged.

One sample = one movie second of one subject inside a clip segment (Khosla et al. 2020): the
subject's in-brain voxels of volume ``second + hemodynamic_delay`` of the run (cropped, normalised per
voxel over the run) and the multi-hot WordNet categories of that second. Movies 1–3 are train/val,
movie 4 is test without its repeated last clip. All subjects watched the same movies, so a second's
stimulus id ``hcp-m<movie>-s<second:04d>`` is shared and guidance encodes it once.

Layout, segments, labels, volumes and frames live in the sibling modules; their docstrings state each
rule (mask, memory, frame → second, val split, label threshold). Data-use terms: users must accept the
WU-Minn HCP Open Access Data Use Terms (ConnectomeDB) and acknowledge the WU-Minn HCP.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from foundation.core.api import DatasetInfo, DatasetPlugin, Sample, Stimulus
from foundation.core.atomic import write_json
from foundation.core.errors import DataError
from foundation.core.hookspecs import hookimpl
from foundation_hcp import layout, volumes
from foundation_hcp.frames import MovieFrames
from foundation_hcp.labels import WordNet, read_wordnet, select_categories
from foundation_hcp.layout import MOVIES, RUNS
from foundation_hcp.segments import (Plan, Segments, load_packaged, load_segments, load_split_lists,
                                     plan_khosla, plan_seconds, wordnet_segments)

log = logging.getLogger(__name__)

_STIMULUS = re.compile(r"^hcp-m([1-4])-s(\d{4,})$")


def stimulus_id(movie: int, second: int) -> str:
    """``hcp-m<movie>-s<second:04d>``: the same for every subject (they all watched the same movie)."""
    return f"hcp-m{movie}-s{second:04d}"


@dataclasses.dataclass(frozen=True)
class HCPOptions:
    """Recipe ``options:`` of the ``hcp`` dataset. Relative paths are taken relative to the dataset ``root``.

    Attributes:
        subjects: subject ids (6-digit folder names; unquoted YAML numbers are accepted) to use, in
            this order; every one must have all four runs. ``null``: the first ``n_subjects`` 6-digit folders (sorted) that have all four
            runs; folders with a missing run are skipped with a warning. (The paper's nine, from the
            public CLIP-MUSED code's ``subject_IDs_train.txt``, are 233326, 172130, 951457, 191336,
            169040, 878776, 169343, 102816, 573249: name them here to reproduce it.)
        n_subjects: how many subjects to discover when ``subjects`` is null (paper: 9).
        crop: per-axis ``start:stop`` of the grid in Python slice syntax, ``"X,Y,Z"``; the default
            ``"2:,4:-5,:-2"`` is the public code's crop (113×136×113 → 111×127×111). ``null`` keeps the
            full grid. No padding is needed: the volume adapter pads each axis to a multiple of
            ``2**len(model.volume_channels)`` on the device (111×127×111 → 112×128×112 with 4 stages).
        normalize: per voxel over the time points of each run: ``minmax`` → [0, 1] (the public code),
            ``zscore``, or ``none`` (raw values; must fit float16). Constant voxels become 0.
        mask: how the in-brain mask is derived (no mask file is part of the layout): ``nonzero`` —
            non-zero in the first volume of every run of the subject (cheap; the HCP pipeline zeroes
            everything outside its brain mask); ``nonconstant`` — non-constant over time in every run
            (reads every run once more).
        mask_file: a NIfTI mask (non-zero = in) on the raw or the cropped grid, used for every subject
            instead of ``mask``.
        hemodynamic_delay: seconds between a movie second and its volume: second ``s`` → volume
            ``s + hemodynamic_delay`` (paper: 4). Seconds whose volume is past the run's end are dropped.
        label_threshold: keep the WordNet categories present in more than this fraction of the training
            seconds (paper: 0.1, 53 categories).
        segments: where the clip segments come from (see ``foundation_hcp.segments``): ``khosla2020``
            (default; ``null`` means the same) — Khosla et al. (2020)'s published segments, shipped in the
            package; ``wordnet`` — derived from the WordNet labels (runs of seconds with a category;
            rest seconds have none); or a JSON/CSV file. A pickle is refused here.
        trust_pickle_segments: path of Khosla et al.'s ``clip_times_24.npy``: loaded with
            ``allow_pickle=True`` (which can run code) only because you name it here (with
            ``segments`` left at ``khosla2020``/``null``).
        split: ``khosla2020`` (default) — Khosla et al.'s published train/val seconds, exactly (2000 +
            265 with their segments; needs those segments); ``val_gap`` — the deterministic rule of
            ``val_seconds``/``val_gap`` below, for any segments.
        repeated_clip: the last clip of every run is the same clip; in movies 1–3 keep its seconds
            (``train``: in train/val as the split assigns them) or ``drop`` them. In movie 4 (test) it
            is always dropped.
        val_seconds: ``split: val_gap`` only: validation seconds (paper: 265), split over movies 1–3
            and taken from the end of each movie's last non-repeated clip(s); 0 disables validation.
        val_gap: ``split: val_gap`` only: seconds just before each validation block (same clip) dropped
            from training, so no training volume is temporally adjacent to a validation one; 0 keeps
            every in-segment second (with the Khosla segments: 2000 + 265, other seconds than theirs).
        wordnet: the labels file; ``null``: ``<root>/7T_movie_resources/WordNetFeatures.hdf5``.
        movie_frames: folder of the movie files (or of extracted frames, see ``foundation_hcp.frames``);
            if given, each stimulus carries the frame of its second for image guidance, else text only.
        frames_cache: where frames decoded from movie files are kept (one PNG per second, read back on
            later runs); ``null``: ``$XDG_CACHE_HOME/foundation/hcp_frames`` (``~/.cache/...``).
        empty_text: ``Stimulus.text`` of a second with no WordNet category (text guidance needs a text;
            the Khosla clips have none such, ``segments: wordnet`` clips neither; a user's segments
            may). Recorded in ``index.json`` with the number of such seconds.
    """

    subjects: list[str | int] | None = None
    n_subjects: int = 9
    crop: str | None = "2:,4:-5,:-2"
    normalize: Literal["minmax", "zscore", "none"] = "minmax"
    mask: Literal["nonzero", "nonconstant"] = "nonzero"
    mask_file: str | None = None
    hemodynamic_delay: int = 4
    label_threshold: float = 0.1
    segments: str | None = "khosla2020"
    trust_pickle_segments: str | None = None
    split: Literal["khosla2020", "val_gap"] = "khosla2020"
    repeated_clip: Literal["train", "drop"] = "train"
    val_seconds: int = 265
    val_gap: int = 10
    wordnet: str | None = None
    movie_frames: str | None = None
    frames_cache: str | None = None
    empty_text: str = "a movie scene"

    def __post_init__(self) -> None:
        if self.subjects is not None:
            if not self.subjects:
                raise ValueError("subjects: give at least one subject id, or null to discover them")
            # YAML reads an unquoted 100610 as an int: take it as the 6-digit folder name
            object.__setattr__(self, "subjects", [f"{s:06d}" if isinstance(s, int) else s for s in self.subjects])
        if self.n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {self.n_subjects}")
        volumes.parse_crop(self.crop)  # raises ValueError with the reason
        if self.hemodynamic_delay < 0:
            raise ValueError(f"hemodynamic_delay must be >= 0 seconds, got {self.hemodynamic_delay}")
        if not 0.0 <= self.label_threshold < 1.0:
            raise ValueError(f"label_threshold must be in [0, 1), got {self.label_threshold}")
        if self.val_seconds < 0 or self.val_gap < 0:
            raise ValueError(f"val_seconds and val_gap must be >= 0, got {self.val_seconds} and {self.val_gap}")
        if self.segments not in (None, "khosla2020") and self.trust_pickle_segments is not None:
            raise ValueError("give either segments (wordnet or a JSON/CSV file) or trust_pickle_segments (the .npy "
                             "pickle), not both")
        if not self.empty_text.strip():
            raise ValueError("empty_text must be a non-empty text (text guidance needs one for every second)")


@dataclasses.dataclass
class _State:
    """Everything :meth:`HCPMovieDataset.info` reads once (headers, segments, labels), reused by samples."""

    root: Path
    subjects: tuple[str, ...]
    skipped: dict[str, str]
    raw_grid: tuple[int, int, int]
    grid: tuple[int, int, int]
    n_volumes: dict[str, dict[int, int]]
    segments: Segments
    plan: Plan
    wordnet: WordNet
    kept: np.ndarray
    frequency: np.ndarray
    frames: MovieFrames | None
    info: DatasetInfo


class HCPMovieDataset(DatasetPlugin):
    """HCP 7T movie watching: MNI volumes → in-brain voxels, WordNet labels, Khosla et al. clip split."""

    name = "hcp"
    Options = HCPOptions
    version = "1"
    description = "HCP 7T movie watching (MNI volumes streamed per run, WordNet labels, clip-segment split)"

    def __init__(self, options: HCPOptions, *, root: Path | None = None, seed: int = 0) -> None:
        super().__init__(options, root=root, seed=seed)
        self._crop = volumes.parse_crop(options.crop)
        self._state_cache: _State | None = None
        self._masks: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ reading the layout once

    def _root(self) -> Path:
        if self.root is None:
            raise DataError("hcp: set datasets[].root to the HCP download folder (the one holding the 6-digit "
                            "subject folders and 7T_movie_resources/)")
        root = Path(self.root)
        if not root.is_dir():
            raise DataError(f"hcp: dataset root {root} is not a folder")
        return root

    def _subjects(self, root: Path) -> tuple[list[str], dict[str, str]]:
        o = self.options
        if o.subjects is not None:
            chosen = list(dict.fromkeys(o.subjects))
            for s in chosen:
                if not (root / s).is_dir():
                    raise DataError(f"hcp: subject {s!r} (named in `subjects`) has no folder {root / s}")
                missing = layout.missing_runs(root, s)
                if missing:
                    raise DataError(f"hcp: subject {s!r} (named in `subjects`) is missing run file(s): "
                                    + ", ".join(str(p) for p in missing))
            return chosen, {}
        chosen, skipped = [], {}
        for s in layout.subject_folders(root):
            missing = layout.missing_runs(root, s)
            if missing:
                skipped[s] = "missing " + ", ".join(p.name for p in missing)
                log.warning("hcp: skipping subject %s: missing run file(s) %s", s, ", ".join(map(str, missing)))
                continue
            chosen.append(s)
            if len(chosen) == o.n_subjects:
                break
        if not chosen:
            raise DataError(f"hcp: no 6-digit subject folder under {root} has all four movie runs "
                            f"({', '.join(RUNS[m].volume_name for m in MOVIES)} under "
                            f"<subject>/MNINonLinear/Results/<run>/)")
        if len(chosen) < o.n_subjects:
            log.warning("hcp: found %d subjects with all four runs under %s, fewer than n_subjects = %d",
                        len(chosen), root, o.n_subjects)
        return chosen, skipped

    def _headers(self, root: Path, subjects: list[str]) -> tuple[tuple[int, int, int], dict[str, dict[int, int]]]:
        ref: volumes.RunHeader | None = None
        n_volumes: dict[str, dict[int, int]] = {}
        for s in subjects:
            n_volumes[s] = {}
            for m in MOVIES:
                h = volumes.read_header(layout.volume_path(root, s, m), f"hcp subject {s} run {RUNS[m].run}")
                if ref is None:
                    ref = h
                elif h.grid != ref.grid:
                    raise DataError(f"hcp: {h.path} has grid {h.grid} but {ref.path} has {ref.grid}; every run of "
                                    f"every subject must be on the same grid (the 1.6 mm MNI volumes)")
                elif not np.allclose(h.affine, ref.affine, atol=1e-3):
                    log.warning("hcp: %s has a different affine than %s", h.path, ref.path)
                n_volumes[s][m] = h.n_volumes
        assert ref is not None
        return ref.grid, n_volumes

    def _segments(self, wn: WordNet) -> Segments:
        o = self.options
        if o.trust_pickle_segments is not None:
            return load_segments(layout.resolve(o.trust_pickle_segments, self.root), trusted=True)
        if o.segments in (None, "khosla2020"):
            return load_packaged()
        if o.segments == "wordnet":
            return wordnet_segments(wn.runs, source=str(wn.path), sha256=wn.sha256)
        return load_segments(layout.resolve(o.segments, self.root), trusted=False)

    def _plan(self, seg: Segments) -> Plan:
        o = self.options
        if o.split == "khosla2020":
            return plan_khosla(seg, load_split_lists(), repeated_clip=o.repeated_clip)
        return plan_seconds(seg, val_seconds=o.val_seconds, val_gap=o.val_gap, repeated_clip=o.repeated_clip)

    def _state(self) -> _State:
        if self._state_cache is not None:
            return self._state_cache
        o = self.options
        root = self._root()
        subjects, skipped = self._subjects(root)
        raw_grid, n_volumes = self._headers(root, subjects)
        grid = volumes.cropped_grid(raw_grid, self._crop)
        if min(grid) < 1:
            raise DataError(f"hcp: crop {o.crop!r} leaves nothing of the {raw_grid} grid")
        wn_path = layout.resolve(o.wordnet, root) if o.wordnet else root / layout.WORDNET_RELPATH
        wn = read_wordnet(wn_path)
        seg = self._segments(wn)
        plan = self._plan(seg)
        for m in MOVIES:
            beyond = [s for s, _ in plan.seconds[m] if s >= wn.rows(m)]
            if beyond:
                raise DataError(f"hcp: clip segments {seg.source} reach second {max(beyond)} of movie {m}, but "
                                f"{wn.path} dataset {RUNS[m].code!r} labels only {wn.rows(m)} seconds; segments "
                                f"and labels do not belong together")
        unlabelled = sum(int(not wn.runs[m][s].any()) for m in MOVIES for s, _ in plan.seconds[m])
        # training seconds that have a volume for at least one subject (equal T everywhere in practice)
        longest = {m: max(n_volumes[s][m] for s in subjects) for m in MOVIES}
        train = {m: secs[secs + o.hemodynamic_delay < longest[m]] for m, secs in plan.of_split("train").items()}
        kept, freq = select_categories(wn, train, o.label_threshold)
        frames = None
        if o.movie_frames:
            cache = layout.resolve(o.frames_cache, root) if o.frames_cache else None
            frames = MovieFrames(layout.resolve(o.movie_frames, root), cache=cache,
                                 seconds={m: [s for s, _ in plan.seconds[m]] for m in MOVIES})
        names = tuple(wn.synsets[k] for k in kept)
        stimuli = (f"frames + text: one frame per second from {frames.folder} ({frames.describe()}; decoded frames "
                   f"cached in {frames.cache}), text = the WordNet names of the second" if frames else
                   "text-only: no movie_frames folder given (Stimulus.text = the WordNet names of the second, "
                   "Stimulus.image = None)")
        extra: dict[str, Any] = {
            "stimuli": stimuli,
            "subjects_from": ("named in options.subjects" if o.subjects is not None else
                              f"the first {o.n_subjects} 6-digit folders (sorted) with all four runs"),
            "skipped_subjects": skipped,
            "raw_grid": list(raw_grid),
            "crop": volumes.crop_text(self._crop),
            "normalize": f"{o.normalize} per voxel over the volumes of each run",
            "mask": (f"mask_file {layout.resolve(o.mask_file, root)}" if o.mask_file else
                     {"nonzero": "non-zero in the first volume of every run of the subject",
                      "nonconstant": "non-constant over time in every run of the subject"}[o.mask]),
            "hemodynamic_delay": o.hemodynamic_delay,
            "segments": seg.source,
            "segments_sha256": seg.sha256,
            "split": ("movies 1-3 train/val, movie 4 test without its repeated last clip; repeated clip in "
                      f"movies 1-3: {o.repeated_clip}; " + (
                          "val: Khosla et al. 2020's published train/val seconds (khosla2020)"
                          if o.split == "khosla2020" else
                          f"val (val_gap rule): last {o.val_seconds} seconds of the non-repeated clips of movies "
                          f"1-3 (split evenly), gap {o.val_gap} s")),
            "empty_text": {"text": o.empty_text, "seconds": unlabelled,
                           "rule": "Stimulus.text of a sample second with no WordNet category"},
            # movie seconds per split from the segments, before the delay drops any (index.json "counts"
            # has the samples per subject)
            "segment_seconds_per_split": plan.counts(),
            "in_segment_seconds_not_samples": plan.dropped,
            "volumes_per_run": {s: {str(m): n for m, n in v.items()} for s, v in n_volumes.items()},
            "wordnet": str(wn.path),
            "wordnet_categories": len(wn.synsets),
            "label_threshold": o.label_threshold,
            "label_frequency": {wn.synsets[k]: round(float(freq[k]), 6) for k in kept},
        }
        info = DatasetInfo(kind="volume", grid=grid, label_names=names, subjects=tuple(subjects), extra=extra)
        self._state_cache = _State(root=root, subjects=tuple(subjects), skipped=skipped, raw_grid=raw_grid, grid=grid,
                                   n_volumes=n_volumes, segments=seg, plan=plan, wordnet=wn, kept=kept,
                                   frequency=freq, frames=frames, info=info)
        return self._state_cache

    # ------------------------------------------------------------------ the plugin contract

    def info(self) -> DatasetInfo:
        return self._state().info

    def _check_subject(self, subject: str) -> _State:
        st = self._state()
        if subject not in st.subjects:
            raise DataError(f"hcp: subject {subject!r} is not one of this dataset's subjects {list(st.subjects)}")
        return st

    def mask(self, subject: str) -> np.ndarray:
        """The subject's in-brain mask on the cropped grid (see ``foundation_hcp.volumes`` for the rules)."""
        st = self._check_subject(subject)
        if subject not in self._masks:
            o = self.options
            if o.mask_file:
                mask = volumes.mask_from_file(layout.resolve(o.mask_file, st.root), st.raw_grid, self._crop)
                what = f"mask_file {o.mask_file}"
            else:
                runs = [(layout.volume_path(st.root, subject, m), f"hcp subject {subject} run {RUNS[m].run}")
                        for m in MOVIES]
                mask = volumes.derive_mask(runs, o.mask, self._crop)
                what = f"mask rule {o.mask!r}"
            if not mask.any():
                raise DataError(f"hcp: subject {subject}: the mask ({what}) is empty on the cropped grid {st.grid}")
            self._masks[subject] = mask
        return self._masks[subject]

    def affine(self, subject: str) -> np.ndarray:
        """The voxel-to-world affine of the subject's first movie run, moved to the cropped grid's voxel 0
        (recorded in ``index.json``: ``foundation predict`` refuses a NIfTI image with another one)."""
        st = self._check_subject(subject)
        header = volumes.read_header(layout.volume_path(st.root, subject, MOVIES[0]),
                                     f"hcp subject {subject} run {RUNS[MOVIES[0]].run}")
        shift = np.eye(4)
        shift[:3, 3] = volumes.crop_offsets(st.raw_grid, self._crop)
        return np.asarray(header.affine, dtype=np.float64) @ shift

    def samples(self, subject: str) -> Iterator[Sample]:
        """Every in-segment second of the subject, movie by movie; one run in memory at a time.

        ``fmri`` is yielded as float16 (the shard dtype), a copy, so samples buffered by the shard writer
        do not keep the previous run's array alive.
        """
        st = self._check_subject(subject)
        o = self.options
        index = volumes.gather_index(self.mask(subject), st.raw_grid, self._crop)
        i = 0
        for m in MOVIES:
            n_t = st.n_volumes[subject][m]
            todo = [(s, sp) for s, sp in st.plan.seconds[m] if s + o.hemodynamic_delay < n_t]
            if len(todo) < len(st.plan.seconds[m]):
                log.info("hcp subject %s movie %d: %d in-segment seconds dropped, their volume (second + %d) is past "
                         "the run's %d volumes", subject, m, len(st.plan.seconds[m]) - len(todo),
                         o.hemodynamic_delay, n_t)
            if not todo:
                continue
            path = layout.volume_path(st.root, subject, m)
            data, stats = volumes.read_run(path, index, st.raw_grid, normalize=o.normalize,
                                           what=f"hcp subject {subject} run {RUNS[m].run}")
            if stats.n_volumes != n_t:
                raise DataError(f"hcp subject {subject}: {path} now has {stats.n_volumes} volumes, its header said "
                                f"{n_t}")
            if stats.constant_voxels:
                log.info("hcp subject %s run %s: %d in-mask voxels are constant over the run (set to 0)", subject,
                         RUNS[m].run, stats.constant_voxels)
            log.debug("hcp subject %s run %s: %d volumes read in %.1fs", subject, RUNS[m].run, n_t, stats.seconds)
            labels = st.wordnet.runs[m][:, st.kept].astype(np.uint8)
            for s, split in todo:
                yield Sample(subject=subject, index=i, split=split, stimulus=stimulus_id(m, s),
                             fmri=data[s + o.hemodynamic_delay].astype(np.float16), labels=labels[s])
                i += 1
            del data  # before the next run is read: never two runs at once

    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        st = self._state()
        parsed = []
        for sid in ids:
            match = _STIMULUS.match(sid)
            if not match:
                raise DataError(f"hcp: {sid!r} is not an hcp stimulus id (hcp-m<movie>-s<second:04d>)")
            m, s = int(match.group(1)), int(match.group(2))
            if s >= st.wordnet.rows(m):
                raise DataError(f"hcp: stimulus {sid!r}: movie {m} has {st.wordnet.rows(m)} labelled seconds")
            parsed.append((m, s))
        images: dict[tuple[int, int], np.ndarray] = {}
        if st.frames is not None:
            for m in MOVIES:
                secs = sorted({s for mm, s in parsed if mm == m})
                if secs:
                    images.update({(m, s): img for s, img in zip(secs, st.frames.read(m, secs))})
        for sid, (m, s) in zip(ids, parsed):
            yield Stimulus(id=sid, image=images.get((m, s)), text=st.wordnet.text(m, s) or self.options.empty_text,
                           extras={"wordnet": st.wordnet.runs[m][s].astype(np.float32)})

    def artifacts(self, out_dir: Path) -> None:
        """``hcp_segments.json`` (the clip segments used) and ``hcp_labels.json`` (the label selection)."""
        st = self._state()
        st.segments.write(Path(out_dir) / "hcp_segments.json")
        write_json(Path(out_dir) / "hcp_labels.json", {
            "wordnet": str(st.wordnet.path),
            "label_threshold": self.options.label_threshold,
            "kept": [{"name": st.wordnet.synsets[k], "column": int(k), "frequency": float(st.frequency[k])}
                     for k in st.kept],
            "n_categories_in_file": len(st.wordnet.synsets),
        })


@hookimpl
def foundation_dataset_plugins() -> list[type[DatasetPlugin]]:
    """Register :class:`HCPMovieDataset` as ``hcp``."""
    return [HCPMovieDataset]
