"""Two example plugins: the ``example-dataset`` dataset and the ``example-guidance`` guidance.

Both are deterministic and tiny, so a test can install this package and read from it in well
under a second.  Only ``foundation`` and ``numpy`` are needed.
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


class ExampleDataset(DatasetPlugin):
    """A tiny ROI dataset: each sample is ``(3, 4)`` float32, two labels, fully seeded."""

    name = "example-dataset"
    Options = ExampleDatasetOptions
    description = "tiny seeded ROI dataset (3 ROIs x 4 dims, 2 labels) from foundation-example-plugin"

    def __init__(self, options: ExampleDatasetOptions, *, root: Path | None = None, seed: int = 0) -> None:
        super().__init__(options, root=root, seed=seed)
        self.subjects = tuple(f"ex{k + 1}" for k in range(options.n_subjects))
        self.stimulus_ids = tuple(f"example-{i:03d}" for i in range(options.n_samples))

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            kind="roi",
            label_names=LABELS,
            subjects=self.subjects,
            token_shape=(N_ROIS, ROI_DIM),
            token_names=tuple(f"roi{k + 1}" for k in range(N_ROIS)),
            extra={"generator": "foundation_example_plugin"},
        )

    @staticmethod
    def _labels(i: int) -> np.ndarray:
        return np.array([i % 2 == 0, i % 3 == 0], dtype=np.uint8)

    @staticmethod
    def _split(i: int) -> Split:
        return "test" if i % 6 == 5 else "val" if i % 6 == 4 else "train"

    def samples(self, subject: str) -> Iterator[Sample]:
        if subject not in self.subjects:
            raise DataError(f"example-dataset has no subject {subject!r} (subjects: {self.subjects})")
        rng = np.random.default_rng([self.seed, self.subjects.index(subject)])
        for i, sid in enumerate(self.stimulus_ids):
            # signal: the labels shift ROI 1 (animal) and ROI 2 (vehicle); plus subject noise
            fmri = rng.standard_normal((N_ROIS, ROI_DIM)).astype(np.float32)
            fmri[:2] += self._labels(i)[:, None].astype(np.float32)
            yield Sample(subject=subject, index=i, split=self._split(i), stimulus=sid,
                         fmri=fmri, labels=self._labels(i))

    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        for sid in ids:
            if sid not in self.stimulus_ids:
                raise DataError(f"example-dataset has no stimulus {sid!r}")
            i = self.stimulus_ids.index(sid)
            image = np.full((8, 8, 3), (i * 20) % 256, dtype=np.uint8)
            words = [name for name, on in zip(LABELS, self._labels(i)) if on] or ["nothing"]
            yield Stimulus(id=sid, image=image, text="a picture of " + " and ".join(words))


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
