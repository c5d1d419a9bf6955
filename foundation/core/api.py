"""The contract between foundation and its plugins.

A *dataset plugin* reads one raw dataset and yields :class:`Sample` objects (one presentation of
one stimulus to one subject) plus the :class:`Stimulus` objects (image and/or text) behind them.
A *guidance plugin* turns stimuli into a low-level and a high-level feature vector each.

Plugins are classes registered through the pluggy hooks in :mod:`foundation.core.hookspecs`; the
framework instantiates them with their validated options dataclass.  Everything a plugin returns
is plain numpy, so plugins need not import torch.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
InputKind = Literal["roi", "volume"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like to the model.

    Attributes:
        kind: ``"roi"`` — each sample is a ``(n_tokens, token_dim)`` array, one row per ROI;
            ``"volume"`` — each sample is the subject's in-mask voxels ``(V_s,)`` of a 3-D ``grid``.
        label_names: names of the ``C`` multi-label categories, in label-vector order.
        subjects: subject ids (without the dataset prefix), in a stable order.
        token_shape: ``(n_tokens, token_dim)`` for ROI datasets, else ``None``.
        token_names: ROI names, one per token, for ROI datasets (used by plots).
        grid: ``(X, Y, Z)`` voxel grid for volume datasets, else ``None``.
        extra: free-form JSON-serialisable facts recorded in ``index.json`` (e.g. PCA dims).
    """

    kind: InputKind
    label_names: tuple[str, ...]
    subjects: tuple[str, ...]
    token_shape: tuple[int, int] | None = None
    token_names: tuple[str, ...] | None = None
    grid: tuple[int, int, int] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "roi" and self.token_shape is None:
            raise ValueError("DatasetInfo(kind='roi') needs token_shape=(n_tokens, token_dim)")
        if self.kind == "volume" and self.grid is None:
            raise ValueError("DatasetInfo(kind='volume') needs grid=(X, Y, Z)")
        if len(set(self.subjects)) != len(self.subjects):
            dupes = sorted({s for s in self.subjects if self.subjects.count(s) > 1})
            raise ValueError(f"DatasetInfo has duplicate subject ids: {dupes}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclasses.dataclass
class Sample:
    """One presentation of one stimulus to one subject.

    Attributes:
        subject: subject id (without dataset prefix).
        index: running number of this sample within its subject, stable across runs.
        split: ``"train"``, ``"val"`` or ``"test"``.
        stimulus: stimulus id, unique within the dataset (shared stimuli share the id).
        fmri: ROI datasets ``(n_tokens, token_dim)``; volume datasets ``(V_s,)`` in-mask voxels,
            ordered as ``np.flatnonzero(mask)`` (C order) of the subject's mask.
        labels: ``(C,)`` multi-hot vector of 0/1.
    """

    subject: str
    index: int
    split: Split
    stimulus: str
    fmri: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class Stimulus:
    """What a subject saw: an image ``(H, W, 3) uint8`` and/or a text, plus named extras.

    ``extras`` carries anything else a guidance plugin may use (the synthetic world puts its
    planted ``"low"`` and ``"high"`` codes there).
    """

    id: str
    image: np.ndarray | None = None
    text: str | None = None
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options dataclass for plugins that take none."""


class DatasetPlugin(ABC):
    """Base class for dataset plugins.

    Subclasses set ``name`` (what recipes write in ``datasets[].plugin``) and ``Options`` (a
    dataclass; recipe ``options:`` are validated against it) and implement the abstract methods.
    The constructor must be cheap: heavy reading happens in :meth:`samples`.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""
    #: bump when the samples a plugin produces change for the same options: it is part of the shard
    #: fingerprint, so shards written by an older version are rebuilt rather than silently reused
    version: ClassVar[str] = "1"
    #: whether the samples depend on the recipe ``seed`` (e.g. a seeded validation split); if so the
    #: seed is part of the shard fingerprint
    seed_dependent: ClassVar[bool] = False

    def __init__(self, options: Any, *, root: Path | None, seed: int) -> None:
        self.options = options
        self.root = root
        self.seed = seed

    @abstractmethod
    def info(self) -> DatasetInfo:
        """Describe the dataset (input kind and shape, labels, subjects)."""

    @abstractmethod
    def samples(self, subject: str) -> Iterator[Sample]:
        """Yield every sample of one subject (all splits), in a deterministic order."""

    def mask(self, subject: str) -> np.ndarray | None:
        """Volume datasets: the subject's boolean brain mask ``(X, Y, Z)``; ROI datasets: ``None``."""
        return None

    @abstractmethod
    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        """Yield the :class:`Stimulus` for each requested id, in the order given."""

    def artifacts(self, out_dir: Path) -> None:
        """Write per-dataset files that belong next to the shards (e.g. PCA bases). Optional."""


@dataclasses.dataclass
class GuidanceFeatures:
    """Features of N stimuli: ``low`` ``(N, D_low)`` and ``high`` ``(N, D_high)``, float32."""

    low: np.ndarray
    high: np.ndarray


class GuidancePlugin(ABC):
    """Base class for guidance plugins (a frozen network that embeds stimuli).

    ``needs`` says what a stimulus must carry (``"image"``, ``"text"`` or an ``extras`` key).
    ``encode`` is called with batches of at most ``batch_size`` stimuli and must be deterministic.
    The constructor must be cheap (load networks lazily on the first ``encode``): the framework
    instantiates plugins just to locate existing shards.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    needs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: bump when the features change for the same options (part of the shard fingerprint)
    version: ClassVar[str] = "1"
    batch_size: int = 64

    def __init__(self, options: Any, *, device: str = "cpu", allow_random_weights: bool = False) -> None:
        self.options = options
        self.device = device
        # Only with an explicit opt-in may a plugin run a randomly initialised network; such runs
        # are flagged in index.json and metrics.json through provenance().
        self.allow_random_weights = allow_random_weights

    @abstractmethod
    def encode(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        """Embed a batch of stimuli into low- and high-level features."""

    def provenance(self) -> dict[str, Any]:
        """Facts recorded in index.json/metrics.json (weights file, random init...)."""
        return {}
