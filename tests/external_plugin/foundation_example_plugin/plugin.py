"""Two example plugins: the ``example-dataset`` dataset and the ``example-guidance`` guidance.

Both are deterministic and tiny, so a test can install this package and read from it in well
under a second.  Only ``foundation`` and ``numpy`` are needed.  ``example-dataset`` shows the
pattern of real ROI datasets: a different voxel count per subject, a PCA per ROI fitted on the
subject's training samples only, bases saved next to the shards and reused by ``encode_raw``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from foundation.core.api import (
    DatasetInfo,
    DatasetPlugin,
    GuidanceFeatures,
    GuidancePlugin,
    Sample,
    Split,
    Stimulus,
)
from foundation.core.errors import DataError
from foundation.core.hookspecs import hookimpl

N_ROIS, ROI_DIM = 3, 4
LABELS = ("animal", "vehicle")


@dataclasses.dataclass(frozen=True)
class ExampleDatasetOptions:
    """Recipe ``options:`` of ``example-dataset``.

    Attributes:
        n_subjects: number of subjects (``ex1``, ``ex2``, ...).
        n_samples: samples per subject; every subject sees the same stimuli.
    """

    n_subjects: int = 2
    n_samples: int = 12


def roi_voxels(subject_number: int) -> tuple[int, ...]:
    """Voxels per ROI of subject ``ex<subject_number>``: 5..8, different for every subject."""
    return tuple(5 + (subject_number + k) % 4 for k in range(N_ROIS))


class ExampleDataset(DatasetPlugin):
    """A tiny ROI dataset as real ones are: raw voxels per ROI, a different voxel count per subject,
    reduced to ``(3, 4)`` tokens by a PCA per subject and ROI fitted on that subject's training samples.

    The raw data of a subject is :meth:`raw` ``(N, V_s)``: its ROIs' voxels side by side.  The PCA
    bases are saved next to the shards (:meth:`artifacts`), so :meth:`encode_raw` turns new raw scans
    of a known subject into the same tokens (``foundation predict RUN scans.npy --raw --subject ex1``).
    """

    name = "example-dataset"
    Options = ExampleDatasetOptions
    description = "tiny seeded ROI dataset (3 ROIs x 4 PCA dims, 2 labels) from foundation-example-plugin"
    raw_input = "(N, V_s) float array: the subject's voxels of roi1, roi2, roi3 side by side"

    def __init__(self, options: ExampleDatasetOptions, *, root: Path | None = None, seed: int = 0) -> None:
        super().__init__(options, root=root, seed=seed)
        self.subjects = tuple(f"ex{k + 1}" for k in range(options.n_subjects))
        self.stimulus_ids = tuple(f"example-{i:03d}" for i in range(options.n_samples))
        self._bases: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # subject → per ROI (mean, components)

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            kind="roi",
            label_names=LABELS,
            subjects=self.subjects,
            token_shape=(N_ROIS, ROI_DIM),
            token_names=tuple(f"roi{k + 1}" for k in range(N_ROIS)),
            extra={"generator": "foundation_example_plugin", "pca": "per subject and ROI, training samples only"},
        )

    @staticmethod
    def _labels(i: int) -> np.ndarray:
        return np.array([i % 2 == 0, i % 3 == 0], dtype=np.uint8)

    @staticmethod
    def _split(i: int) -> Split:
        return "test" if i % 6 == 5 else "val" if i % 6 == 4 else "train"

    def _check_subject(self, subject: str) -> int:
        if subject not in self.subjects:
            raise DataError(f"example-dataset has no subject {subject!r} (subjects: {self.subjects})")
        return self.subjects.index(subject) + 1

    def raw(self, subject: str) -> np.ndarray:
        """The subject's raw scans ``(n_samples, V_s)`` float32 (a real plugin reads them from ``root``)."""
        number = self._check_subject(subject)
        rng = np.random.default_rng([self.seed, number])
        blocks = []
        for k, v in enumerate(roi_voxels(number)):
            block = rng.standard_normal((len(self.stimulus_ids), v)).astype(np.float32)
            if k < len(LABELS):  # signal: ROI 1 carries "animal", ROI 2 "vehicle"
                on = np.array([self._labels(i)[k] for i in range(len(self.stimulus_ids))], np.float32)
                block += 2 * on[:, None]
            blocks.append(block)
        return np.concatenate(blocks, axis=1)

    def _fit(self, subject: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per ROI ``(mean (V,), components (V, k))`` fitted on the subject's training samples only."""
        if subject not in self._bases:
            number = self._check_subject(subject)
            raw = self.raw(subject).astype(np.float64)
            train = raw[[self._split(i) == "train" for i in range(len(raw))]]
            bases, start = [], 0
            for v in roi_voxels(number):
                x = train[:, start:start + v]
                mean = x.mean(axis=0)
                _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
                k = min(ROI_DIM, v, len(x) - 1)
                bases.append((mean, vt[:k].T))
                start += v
            self._bases[subject] = bases
        return self._bases[subject]

    @staticmethod
    def _tokens(raw: np.ndarray, bases: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """``(N, V_s)`` raw → ``(N, 3, 4)`` float32 tokens; an ROI with fewer components is zero-padded."""
        out = np.zeros((len(raw), N_ROIS, ROI_DIM), dtype=np.float32)
        start = 0
        for r, (mean, comps) in enumerate(bases):
            v = len(mean)
            out[:, r, : comps.shape[1]] = (raw[:, start:start + v].astype(np.float64) - mean) @ comps
            start += v
        return out

    def samples(self, subject: str) -> Iterator[Sample]:
        tokens = self._tokens(self.raw(subject), self._fit(subject))
        for i, sid in enumerate(self.stimulus_ids):
            yield Sample(subject=subject, index=i, split=self._split(i), stimulus=sid,
                         fmri=tokens[i], labels=self._labels(i))

    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        for sid in ids:
            if sid not in self.stimulus_ids:
                raise DataError(f"example-dataset has no stimulus {sid!r}")
            i = self.stimulus_ids.index(sid)
            image = np.full((8, 8, 3), (i * 20) % 256, dtype=np.uint8)
            words = [name for name, on in zip(LABELS, self._labels(i)) if on] or ["nothing"]
            yield Stimulus(id=sid, image=image, text="a picture of " + " and ".join(words))

    def artifacts(self, out_dir: Path) -> None:
        """Save each subject's PCA bases as ``out_dir/example_pca/<subject>.npz``."""
        folder = Path(out_dir) / "example_pca"
        folder.mkdir(parents=True, exist_ok=True)
        for subject in self.subjects:
            arrays = {}
            for r, (mean, comps) in enumerate(self._fit(subject)):
                arrays[f"mean_{r}"], arrays[f"components_{r}"] = mean, comps
            np.savez(folder / f"{subject}.npz", **arrays)

    def encode_raw(self, subject: str, raw: np.ndarray, *, artifacts: Path) -> np.ndarray:
        """Tokens ``(N, 3, 4)`` of new raw scans ``(N, V_s)`` of ``subject``, with the saved bases."""
        number = self._check_subject(subject)
        path = Path(artifacts) / "example_pca" / f"{subject}.npz"
        if not path.is_file():
            raise DataError(f"{path} not found: the shards of this run have no PCA bases for {subject!r}")
        with np.load(path, allow_pickle=False) as z:
            bases = [(z[f"mean_{r}"], z[f"components_{r}"]) for r in range(N_ROIS)]
        raw = np.asarray(raw)
        if raw.ndim != 2 or raw.shape[1] != sum(roi_voxels(number)):
            raise DataError(f"raw scans of {subject!r} have shape {raw.shape}; expected (N, {sum(roi_voxels(number))}) "
                            f"(its voxels of roi1..roi3: {roi_voxels(number)})")
        return self._tokens(raw, bases)


@dataclasses.dataclass(frozen=True)
class ExampleGuidanceOptions:
    """Recipe ``options:`` of ``example-guidance``: feature sizes and a salt for the hash."""

    low_dim: int = 8
    high_dim: int = 4
    salt: str = "example"


class ExampleGuidance(GuidancePlugin):
    """Deterministic pseudo-features: a seeded hash of the stimulus id, expanded to vectors."""

    name = "example-guidance"
    Options = ExampleGuidanceOptions
    needs = ()
    description = "hash-of-stimulus-id features (low 8, high 4) from foundation-example-plugin"

    def _vector(self, sid: str, level: str, dim: int) -> np.ndarray:
        digest = hashlib.sha256(f"{self.options.salt}:{level}:{sid}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return rng.standard_normal(dim).astype(np.float32)

    def encode(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        o = self.options
        n = len(stimuli)
        low = np.array([self._vector(s.id, "low", o.low_dim) for s in stimuli], dtype=np.float32)
        high = np.array([self._vector(s.id, "high", o.high_dim) for s in stimuli], dtype=np.float32)
        return GuidanceFeatures(low=low.reshape(n, o.low_dim), high=high.reshape(n, o.high_dim))

    def provenance(self) -> dict[str, object]:
        return {"plugin": "foundation-example-plugin", "salt": self.options.salt}


@hookimpl
def foundation_dataset_plugins() -> list[type[DatasetPlugin]]:
    """Register :class:`ExampleDataset`."""
    return [ExampleDataset]


@hookimpl
def foundation_guidance_plugins() -> list[type[GuidancePlugin]]:
    """Register :class:`ExampleGuidance`."""
    return [ExampleGuidance]
