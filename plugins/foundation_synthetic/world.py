"""A seeded synthetic fMRI world that plants what CLIP-MUSED is about.

Stimuli carry a low-level visual code ``l`` (colour, layout) and a high-level semantic code ``h``
derived from their multi-label categories.  Subjects respond through their *own* functional
topography, so pooling subjects naively hurts and subject-specific tokens help:

* **ROI mode** (NSD-like): ``n_rois`` regions ordered from early (driven by ``l``) to late (driven
  by ``h``), each emitting one token of ``token_dim`` components, as per-subject PCA of the ROI's
  voxels would.  Each subject has its own *functional topography*: every ROI's place on the
  low→high hierarchy moves, its gain and size (hence signal-to-noise) vary, its components may come
  out mirrored (PCA fixes axes only up to sign), and its code→response map is partly its own.
  These differences are few numbers per subject (cheap to encode in subject tokens) but they make
  the same token mean different things in different subjects, so naive pooling hurts.  Most
  stimuli are seen by one subject only (few per subject, so single-subject models starve); a
  shared set seen by everyone is the test set.
* **Volume mode** (HCP-like): everyone watches the same "movie", a sequence of scenes whose codes
  drift smoothly from second to second.  Functional areas are smooth blobs on a small 3-D grid whose
  centres, widths and gains move per subject; the signal is smoothed over time like a haemodynamic
  response.  The split is contiguous in time (train, then validation, then test).

All arrays come from ``numpy.random.Generator`` streams keyed by (world_seed, purpose, subject), so a
subject's data do not depend on how many other subjects exist.
"""

from __future__ import annotations

import dataclasses
import zlib
from functools import cached_property
from typing import Literal

import numpy as np

CATEGORY_NAMES = (
    "person", "dog", "cat", "car", "tree", "house", "boat", "bird", "horse", "chair",
    "cup", "flower", "bicycle", "clock", "train", "umbrella", "pizza", "kite", "bench", "bottle",
)


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """Options of the synthetic dataset plugin (recipe ``datasets[].options``)."""

    mode: Literal["roi", "volume"] = "roi"
    world_seed: int = 0
    n_subjects: int = 10
    n_categories: int = 12
    # "dataset": the dataset's own semantic space over its ``n_categories`` labels (every world before
    # issue 13's item 5). "population": one semantic space over all 20 categories, shared by every
    # dataset of the same ``world_seed`` (two acquisitions of one population); the dataset labels
    # categories ``label_offset`` .. ``label_offset + n_categories - 1`` of it.
    semantics: Literal["dataset", "population"] = "dataset"
    label_offset: int = 0
    low_dim: int = 16
    high_dim: int = 16
    noise: float = 1.5
    # How much the functional topography differs between subjects (0 = identical subjects).
    subject_variability: float = 1.0
    image_size: int = 32
    # ROI mode
    n_rois: int = 8
    token_dim: int = 32
    voxels_per_roi: tuple[int, int] = (48, 128)
    stimuli_per_subject: int = 250
    val_fraction: float = 0.1
    shared_test: int = 120
    # Volume mode
    grid: tuple[int, int, int] = (12, 14, 12)
    seconds: int = 900
    n_areas: int = 12
    val_fraction_time: float = 0.1
    test_fraction_time: float = 0.2

    def __post_init__(self) -> None:
        if self.n_categories > len(CATEGORY_NAMES) or self.n_categories < 2:
            raise ValueError(f"n_categories must be in [2, {len(CATEGORY_NAMES)}], got {self.n_categories}")
        if self.semantics == "dataset" and self.label_offset:
            raise ValueError(f"label_offset needs semantics: population (got label_offset={self.label_offset} "
                             "with semantics: dataset)")
        if self.label_offset < 0 or self.label_offset + self.n_categories > len(CATEGORY_NAMES):
            raise ValueError(f"label_offset + n_categories must be within the {len(CATEGORY_NAMES)} categories, "
                             f"got {self.label_offset} + {self.n_categories}")
        if self.n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {self.n_subjects}")
        if len(self.grid) != 3 or min(self.grid) < 4:
            raise ValueError(f"grid must be three sizes >= 4, got {self.grid}")
        lo, hi = self.voxels_per_roi
        if not 1 <= lo <= hi:
            raise ValueError(f"voxels_per_roi must be (low, high) with 1 <= low <= high, got {self.voxels_per_roi}")


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    words = [seed] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclasses.dataclass
class StimulusSet:
    """All stimuli of the world: ids, labels ``(N, C)``, low codes ``(N, L)``, high codes ``(N, H)``."""

    ids: list[str]
    labels: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @cached_property
    def position(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.ids)}


@dataclasses.dataclass
class SubjectData:
    """One subject's samples: stimulus rows, splits, and fMRI (ROI ``(N, R, D)`` or voxels ``(N, V)``)."""

    stimulus_rows: np.ndarray
    splits: list[str]
    fmri: np.ndarray
    mask: np.ndarray | None = None


class World:
    """The generator. Cheap to construct; stimuli and subjects are made on first use."""

    def __init__(self, options: SyntheticOptions) -> None:
        self.o = options
        self.subjects = tuple(f"sub-{i + 1:02d}" for i in range(options.n_subjects))
        population = options.semantics == "population"
        # the categories stimuli are drawn over, and the columns of them this dataset labels
        self._n_content = len(CATEGORY_NAMES) if population else options.n_categories
        self._label_columns = slice(options.label_offset, options.label_offset + options.n_categories)
        self.label_names = CATEGORY_NAMES[self._label_columns]
        # subjects of two datasets of one population are different people: their streams carry the mode
        self._subject_key: tuple[str, ...] = ("subject", options.mode) if population else ("subject",)

    # ----------------------------------------------------------------- semantics
    @cached_property
    def _semantics(self) -> dict[str, np.ndarray]:
        o = self.o
        r = _rng(o.world_seed, "population-semantics" if o.semantics == "population" else "semantics")
        c = self._n_content
        return {
            # category prevalence: a few common, many rare (as in COCO / WordNet labels)
            "prior": 0.5 / (1.0 + np.arange(c)) ** 0.6 * r.uniform(0.7, 1.3, c),
            "embed": r.normal(size=(c, o.high_dim)),  # category → high-level semantic direction
            "visual": r.normal(size=(c, o.low_dim)) * 0.5,  # categories have typical looks
        }

    def _draw_labels(self, r: np.random.Generator, n: int) -> np.ndarray:
        prior = self._semantics["prior"]
        labels = (r.random((n, len(prior))) < prior).astype(np.uint8)
        empty = labels.sum(1) == 0
        labels[empty, r.choice(len(prior), size=int(empty.sum()), p=prior / prior.sum())] = 1
        return labels

    def _codes(self, r: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sem = self._semantics
        lab = labels.astype(np.float64)
        high = lab @ sem["embed"] / np.sqrt(lab.sum(1, keepdims=True)) + 0.3 * r.normal(size=(len(lab), self.o.high_dim))
        low = lab @ sem["visual"] + r.normal(size=(len(lab), self.o.low_dim))
        return low, high

    @cached_property
    def stimuli(self) -> StimulusSet:
        return self._movie_stimuli() if self.o.mode == "volume" else self._image_stimuli()

    def _image_stimuli(self) -> StimulusSet:
        o = self.o
        # one stream for the shared test set and one per subject: a subject's stimuli do not depend
        # on how many other subjects the world has
        blocks = [("shared", o.shared_test, [f"shared-{i:05d}" for i in range(o.shared_test)])]
        blocks += [(s, o.stimuli_per_subject, [f"{s}-{i:05d}" for i in range(o.stimuli_per_subject)])
                   for s in self.subjects]
        ids, labels, low, high = [], [], [], []
        for owner, n, names in blocks:
            r = _rng(o.world_seed, "stimuli", owner)
            lab = self._draw_labels(r, n)
            lo, hi = self._codes(r, lab)
            ids += names
            labels.append(lab[:, self._label_columns])
            low.append(lo)
            high.append(hi)
        return StimulusSet(ids, np.concatenate(labels), np.concatenate(low).astype(np.float32),
                           np.concatenate(high).astype(np.float32))

    def _movie_stimuli(self) -> StimulusSet:
        o = self.o
        r = _rng(o.world_seed, "movie")
        labels = np.zeros((o.seconds, self._n_content), np.uint8)
        low = np.zeros((o.seconds, o.low_dim))
        high = np.zeros((o.seconds, o.high_dim))
        t = 0
        while t < o.seconds:
            length = int(r.integers(6, 20))
            sl = slice(t, min(o.seconds, t + length))
            scene_labels = self._draw_labels(r, 1)
            scene_low, scene_high = self._codes(r, scene_labels)
            labels[sl] = scene_labels
            high[sl] = scene_high
            # low-level code drifts within a scene (AR(1)) around the scene's look
            state = scene_low[0]
            for i in range(sl.start, sl.stop):
                state = 0.8 * state + 0.2 * scene_low[0] + 0.35 * r.normal(size=o.low_dim)
                low[i] = state
            t = sl.stop
        ids = [f"t{i:05d}" for i in range(o.seconds)]
        return StimulusSet(ids, labels[:, self._label_columns], low.astype(np.float32), high.astype(np.float32))

    def splits_for(self, subject: str) -> tuple[np.ndarray, list[str]]:
        """Stimulus rows a subject saw and the split of each."""
        o = self.o
        if o.mode == "volume":
            n = o.seconds
            n_test = int(round(n * o.test_fraction_time))
            n_val = int(round(n * o.val_fraction_time))
            n_train = n - n_val - n_test
            return np.arange(n), ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
        s = self.subjects.index(subject)
        own = o.shared_test + s * o.stimuli_per_subject + np.arange(o.stimuli_per_subject)
        n_val = int(round(o.stimuli_per_subject * o.val_fraction))
        perm = _rng(o.world_seed, "split", subject).permutation(o.stimuli_per_subject)
        split = np.array(["train"] * o.stimuli_per_subject, dtype=object)
        split[perm[:n_val]] = "val"
        rows = np.concatenate([own, np.arange(o.shared_test)])
        splits = list(split) + ["test"] * o.shared_test
        return rows, splits

    # ------------------------------------------------------------------ subjects
    def subject(self, subject: str) -> SubjectData:
        if subject not in self.subjects:
            raise KeyError(f"synthetic world has no subject {subject!r}; it has {list(self.subjects)}")
        rows, splits = self.splits_for(subject)
        if self.o.mode == "volume":
            fmri, mask = self._volume_responses(subject, rows)
            return SubjectData(rows, splits, fmri, mask)
        return SubjectData(rows, splits, self._roi_responses(subject, rows, splits))

    @cached_property
    def _roi_templates(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Canonical code → source maps per ROI: (low map (D, L), high map (D, H))."""
        o = self.o
        r = _rng(o.world_seed, "roi-templates")
        return [(r.normal(size=(o.token_dim, o.low_dim)) / np.sqrt(o.low_dim),
                 r.normal(size=(o.token_dim, o.high_dim)) / np.sqrt(o.high_dim)) for _ in range(o.n_rois)]

    def _roi_responses(self, subject: str, rows: np.ndarray, splits: list[str]) -> np.ndarray:
        """ROI tokens ``(N, R, D)`` of one subject, in each ROI's canonical coordinates.

        The tokens stand for what per-subject PCA of ROI voxels gives: ``D`` components per ROI.
        What differs between subjects is the functional topography: each ROI's place on the
        low→high hierarchy, its gain (signal strength), its size (bigger ROIs give cleaner
        components) and a subject-specific distortion of the ROI's code→response map.
        """
        o = self.o
        v = o.subject_variability
        r = _rng(o.world_seed, *self._subject_key, subject)
        st = self.stimuli
        low, high = st.low[rows].astype(np.float64), st.high[rows].astype(np.float64)
        level = np.clip(np.linspace(0.0, 1.0, o.n_rois) + v * r.normal(0, 0.8, o.n_rois), 0, 1)
        gains = np.exp(v * r.normal(0, 0.8, o.n_rois))
        # PCA leaves each component's sign arbitrary: a subject's ROI may come out mirrored
        signs = np.where(r.random(o.n_rois) < 0.5 * min(v, 1.0), -1.0, 1.0)
        n_vox = r.integers(o.voxels_per_roi[0], o.voxels_per_roi[1] + 1, o.n_rois)
        noise_sd = o.noise * np.sqrt(np.mean(o.voxels_per_roi) / n_vox) * np.exp(v * r.normal(0, 0.2))
        train = np.array([s == "train" for s in splits])
        out = np.zeros((len(rows), o.n_rois, o.token_dim), np.float32)
        w = 0.3 * min(v, 1.0)  # weight of the subject-specific part of each map
        for k, (map_low, map_high) in enumerate(self._roi_templates):
            ml = np.sqrt(1 - w**2) * map_low + w * r.normal(size=map_low.shape) / np.sqrt(o.low_dim)
            mh = np.sqrt(1 - w**2) * map_high + w * r.normal(size=map_high.shape) / np.sqrt(o.high_dim)
            source = (1 - level[k]) * low @ ml.T + level[k] * high @ mh.T  # (N, D)
            tokens = signs[k] * gains[k] * source + noise_sd[k] * r.normal(size=source.shape)
            mean, std = tokens[train].mean(0), tokens[train].std(0) + 1e-8  # standardised on train
            out[:, k] = (tokens - mean) / std
        return out

    def area_maps(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (V, K), drive (T, K))`` of a volume-mode subject: its ``K = n_areas`` area maps over its in-mask
        voxels and the areas' drive per second, haemodynamically smoothed — the planted answer key behind
        ``subject(...).fmri`` (``drive @ maps.T`` plus noise, z-scored per voxel), for diagnostics
        (``benchmarks/volume_oracle.py``)."""
        if self.o.mode != "volume":
            raise ValueError(f"area maps exist in volume mode only; this world is in {self.o.mode!r} mode")
        rows, _ = self.splits_for(subject)
        maps, drive, _, _ = self._volume_areas(subject, rows)
        return maps, drive

    def _volume_areas(self, subject: str, rows: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
        """``(maps (V, K), drive (T, K), mask, r)``: the subject's area maps, smoothed drive and brain mask, and its
        random stream after every draw they took (the noise is drawn from it next)."""
        o = self.o
        v = o.subject_variability
        grid = np.array(o.grid)
        canon = _rng(o.world_seed, "areas")
        centres = canon.uniform(0.2, 0.8, size=(o.n_areas, 3)) * grid
        # posterior (low y) areas are early/low-level, anterior ones late/high-level
        level = np.clip(centres[:, 1] / grid[1], 0, 1)
        w_low = canon.normal(size=(o.n_areas, o.low_dim)) / np.sqrt(o.low_dim)
        w_high = canon.normal(size=(o.n_areas, o.high_dim)) / np.sqrt(o.high_dim)
        r = _rng(o.world_seed, *self._subject_key, subject)
        centres = centres + v * r.normal(0, 1.0, centres.shape)
        widths = 1.6 * np.exp(v * r.normal(0, 0.2, o.n_areas))
        gains = np.exp(v * r.normal(0, 0.3, o.n_areas))
        w_low = w_low + 0.5 * v * r.normal(size=w_low.shape) / np.sqrt(o.low_dim)
        w_high = w_high + 0.5 * v * r.normal(size=w_high.shape) / np.sqrt(o.high_dim)
        # brain mask: an ellipsoid whose radii vary per subject
        axes = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in o.grid], indexing="ij"), -1)
        radii = grid / 2 * (0.92 + 0.06 * r.uniform(-1, 1, 3))
        mask = (((axes - grid / 2) / radii) ** 2).sum(-1) <= 1.0
        coords = axes[mask]  # (V, 3)
        dist2 = ((coords[:, None, :] - centres[None]) ** 2).sum(-1)  # (V, K)
        maps = gains * np.exp(-dist2 / (2 * widths**2))  # (V, K)
        st = self.stimuli
        drive = (1 - level) * (st.low[rows] @ w_low.T) + level * (st.high[rows] @ w_high.T)  # (T, K)
        # haemodynamic smoothing over seconds (causal exponential kernel)
        kernel = np.exp(-np.arange(6) / 2.0)
        kernel /= kernel.sum()
        drive = np.stack([np.convolve(drive[:, k], kernel)[: len(rows)] for k in range(o.n_areas)], 1)
        return maps, drive, mask, r

    def _volume_responses(self, subject: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o = self.o
        maps, drive, mask, r = self._volume_areas(subject, rows)
        noise = o.noise * np.exp(o.subject_variability * r.normal(0, 0.2)) * r.normal(size=(len(rows), len(maps)))
        fmri = drive @ maps.T + 0.5 * noise
        fmri = (fmri - fmri.mean(0)) / (fmri.std(0) + 1e-6)  # z-score each voxel over time
        return fmri.astype(np.float32), mask
