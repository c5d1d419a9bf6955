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


def _plain_id(value: Any) -> Any:
    """A numpy string or bytes scalar as a plain ``str``; anything else unchanged (checked later)."""
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.bytes_):
        return value.decode()
    return value


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
        # ids read from arrays arrive as numpy scalars (np.str_): keep plain str, so messages and
        # index.json show 'sub-01', not np.str_('sub-01')
        for field in ("label_names", "subjects", "token_names"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, tuple(_plain_id(v) for v in value))
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

    def __post_init__(self) -> None:  # numpy scalars read from arrays → plain Python values
        self.subject, self.split, self.stimulus = (_plain_id(self.subject), _plain_id(self.split),
                                                   _plain_id(self.stimulus))
        if isinstance(self.index, np.integer):
            self.index = int(self.index)


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

    def __post_init__(self) -> None:
        self.id, self.text = _plain_id(self.id), _plain_id(self.text)


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
    #: options added after shards had been built without them: left out of the shard fingerprint while
    #: they hold their default (which must reproduce the samples from before the option existed), so
    #: existing shard directories keep their names and are not rebuilt
    fingerprint_omits_defaults: ClassVar[tuple[str, ...]] = ()
    #: plugins whose validation set is drawn over all their subjects together (NSD's 1000 samples)
    #: name the option (a list of subject ids, ``None`` = all) that limits the subjects they read.  A
    #: recipe that narrows such a dataset to one subject (``datasets[].subjects: [s]``, a single-subject
    #: model) sets that option to ``[s]``, so the subject gets a validation set of its own, drawn from
    #: its samples alone, as the paper gives each single-subject model (unless the recipe set the
    #: option itself).
    subjects_option: ClassVar[str | None] = None

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

    def affine(self, subject: str) -> np.ndarray | None:
        """Volume datasets read from NIfTI, optional: the subject's voxel-to-world affine ``(4, 4)`` of the
        dataset's grid (after any crop).  Recorded in ``index.json``; ``foundation predict`` refuses a NIfTI
        image whose affine differs (a flipped or shifted image would decode silently).  ``None`` (default):
        nothing recorded, only the image's shape is checked."""
        return None

    @abstractmethod
    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        """Yield the :class:`Stimulus` for each requested id, in the order given."""

    def artifacts(self, out_dir: Path) -> None:
        """Write per-dataset files that belong next to the shards (e.g. PCA bases). Optional.

        Called once per build, after :meth:`samples` has been read for every subject, with the shard
        directory being built (``out_dir`` is its root; write under a folder named after the plugin).
        """

    #: ROI datasets that implement :meth:`encode_raw`: one line saying what raw input it takes, shown
    #: by ``foundation plugins`` and in ``foundation predict --raw`` errors
    raw_input: ClassVar[str] = ""

    def encode_raw(self, subject: str, raw: np.ndarray, *, artifacts: Path) -> np.ndarray:
        """ROI datasets, optional: tokens ``(N, n_tokens, token_dim)`` of new raw scans of ``subject``.

        Makes exactly what :meth:`samples` would make of the same scans (same per-subject
        preprocessing, e.g. the PCA fitted at shard time), so that ``foundation predict RUN RAW
        --raw --subject S`` decodes raw data with a trained model.  ``raw`` is the input file's array
        (a ``.npy`` array as saved; a NIfTI image as ``np.asarray(nibabel.load(path).dataobj)``);
        its layout is the plugin's to define: say it in :attr:`raw_input`.  ``artifacts`` is the
        shard directory the run was trained on, holding what :meth:`artifacts` wrote.

        The instance is built from the run's recipe (options, seed), but ``root`` is ``None`` when
        the recipe's raw dataset is not on this machine: read only ``raw`` and ``artifacts``.  Raise
        :class:`foundation.core.errors.DataError` naming what is wrong (shape, subject).  The default
        raises ``NotImplementedError``: the plugin does not take raw input.
        """
        raise NotImplementedError(f"dataset plugin {self.name!r} does not implement encode_raw")

    @classmethod
    def takes_raw_input(cls) -> bool:
        """Whether the class overrides :meth:`encode_raw`."""
        return cls.encode_raw is not DatasetPlugin.encode_raw


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
