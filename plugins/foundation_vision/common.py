"""What every built-in network guidance plugin shares.

- :class:`NetworkGuidance`: the lazy-loading base class (network built on the first ``encode``,
  eval mode, ``torch.inference_mode()``, on the plugin's device, batched, a progress counter,
  seeded random initialisation when random weights are allowed, provenance).
- feature post-processing: :func:`clip_and_normalise` (Appendix A: clip to ±1.5, then unit L2 norm),
  token/feature-map reduction to one vector (:func:`reduce_tokens`, :func:`reduce_map`).
- image preparation: ``(H, W, 3) uint8`` arrays → the model's own eval transform → one tensor batch.

torch and the vision libraries are imported inside functions so that listing plugins stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from foundation.core.api import GuidanceFeatures, GuidancePlugin, Stimulus
from foundation.core.errors import DataError, PluginError, RecipeError, WeightsMissingError
from foundation_vision.weights import WeightsPlan

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the clipping threshold of Appendix A (image and text features of CLIP)
PAPER_CLIP = 1.5

_GRID = re.compile(r"^grid(\d+)$")


# ----------------------------------------------------------------------------- post-processing


def clip_and_normalise(x: np.ndarray, clip: float | None) -> np.ndarray:
    """Clip every value to ``[-clip, clip]`` (skipped when ``clip`` is None), then scale each row to unit L2 norm.

    A row that is all zeros stays zero (no NaN).
    """
    x = np.asarray(x, np.float32)
    if clip is not None:
        x = np.clip(x, -clip, clip)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def check_pool(pool: str, *, plugin: str) -> str:
    """Validate a ``low_pool`` option: ``mean``, ``cls`` (token models only) or ``gridK`` (K×K spatial means)."""
    if pool in ("mean", "cls") or _GRID.match(pool):
        return pool
    raise RecipeError(f"guidance.options.{plugin}.low_pool: {pool!r} is not one of 'mean', 'cls', 'gridK' "
                      f"(e.g. 'grid2' for 2x2 spatial means)")


def reduce_map(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, C)`` (``mean``) or ``(N, C·K·K)`` (``gridK``: adaptive average pool to K×K)."""
    import torch.nn.functional as F

    m = _GRID.match(pool)
    if m:
        k = int(m.group(1))
        return F.adaptive_avg_pool2d(fmap, (k, k)).flatten(1)
    if pool == "mean":
        return fmap.mean(dim=(2, 3))
    raise RecipeError(f"low_pool {pool!r} needs tokens; a convolutional feature map takes 'mean' or 'gridK'")


def reduce_tokens(tokens: torch.Tensor, grid: tuple[int, int], pool: str) -> torch.Tensor:
    """``(N, L, D)`` transformer tokens → one vector per stimulus.

    The last ``grid[0]·grid[1]`` tokens are the patch tokens (row-major); the ones before them are
    prefix tokens (CLS, registers).  ``mean``: mean over patch tokens ``(N, D)``; ``cls``: the first
    token ``(N, D)``; ``gridK``: patch tokens as a ``(D, gh, gw)`` map averaged to K×K ``(N, D·K·K)``.
    """
    n_patch = grid[0] * grid[1]
    if tokens.shape[1] < n_patch:
        raise PluginError(f"transformer block output has {tokens.shape[1]} tokens, fewer than the {n_patch} patches")
    patches = tokens[:, tokens.shape[1] - n_patch:]
    if pool == "cls":
        if tokens.shape[1] == n_patch:
            raise RecipeError("low_pool 'cls': this network has no class token; use 'mean' or 'gridK'")
        return tokens[:, 0]
    if pool == "mean":
        return patches.mean(dim=1)
    fmap = patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid[0], grid[1])
    return reduce_map(fmap, pool)


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- images


def to_pil(image: Any, stimulus_id: str, plugin: str):
    """A stimulus image ``(H, W, 3)`` (or ``(H, W)``/``(H, W, 4)``) uint8 array as an RGB PIL image."""
    from PIL import Image

    if image is None:
        raise DataError(f"guidance plugin {plugin!r} needs an image, but stimulus {stimulus_id!r} has none")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or min(arr.shape[:2]) < 1:
        raise DataError(f"stimulus {stimulus_id!r}: image has shape {arr.shape}, expected (H, W, 3) uint8")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            arr = np.round(arr * 255)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def image_batch(stimuli: Sequence[Stimulus], transform: Callable, plugin: str) -> torch.Tensor:
    """The model's eval transform applied to each stimulus image, stacked into ``(N, 3, H, W)`` float32."""
    import torch

    return torch.stack([transform(to_pil(s.image, s.id, plugin)) for s in stimuli])


# ----------------------------------------------------------------------------- the base class


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbid the Hugging Face hub from reaching the network while a network is built."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NetworkGuidance(GuidancePlugin):
    """Base of the built-in network plugins: load lazily, encode in batches, report provenance.

    Subclasses implement :meth:`plan_weights` (cheap: where the weights are, no loading),
    :meth:`build` (construct the network, load :attr:`plan`'s file or keep the seeded random init)
    and :meth:`encode_batch` (one batch of at most ``batch_size`` stimuli, under inference mode).
    Their ``Options`` may carry ``batch_size`` (overrides the class default; 0 keeps it) and ``seed``.
    """

    #: what the low/high features are, recorded in provenance (subclasses fill in)
    feature_doc: ClassVar[dict[str, str]] = {}
    #: distributions whose versions are recorded in provenance
    libraries: tuple[str, ...] = ("torch",)
    #: plugins that run the same network share this key, so their random initialisations are identical
    init_key: str | None = None

    def __init__(self, options: Any, *, device: str = "cpu", allow_random_weights: bool = False) -> None:
        super().__init__(options, device=device, allow_random_weights=allow_random_weights)
        size = getattr(options, "batch_size", 0)
        if size:
            if size < 1:
                raise RecipeError(f"guidance.options.{self.name}.batch_size must be >= 1, got {size}")
            self.batch_size = int(size)
        self._plan: WeightsPlan | None = None
        self._net: Any = None
        self._bar: Any = None
        self._encoded = 0

    # -- weights
    @abstractmethod
    def plan_weights(self) -> WeightsPlan:
        """Locate the weights (cheap, no loading); raise WeightsMissingError if absent and not allowed."""

    @property
    def plan(self) -> WeightsPlan:
        if self._plan is None:
            self._plan = self.plan_weights()
        return self._plan

    @abstractmethod
    def build(self) -> Any:
        """Construct the network on CPU and load :attr:`plan` (runs inside a seeded RNG scope)."""

    def network(self) -> Any:
        """The network, built on first use (weights located, loaded, eval mode, on the device)."""
        if self._net is None:
            import torch

            self.plan  # noqa: B018 - locate the weights first: WeightsMissingError before anything heavy
            seed = stable_seed("init", self.init_key or self.name, getattr(self.options, "seed", 0))
            with offline(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed % (2**63))
                self._net = self.build()
        return self._net

    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    # -- encoding
    @abstractmethod
    def encode_batch(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        """Features of at most ``batch_size`` stimuli (called under ``torch.inference_mode()``)."""

    def check_stimuli(self, stimuli: Sequence[Stimulus]) -> None:
        """Raise DataError naming the first stimulus that lacks what ``needs`` says (overridable)."""
        for s in stimuli:
            if "image" in self.needs and s.image is None:
                raise DataError(f"guidance plugin {self.name!r} needs an image, but stimulus {s.id!r} has none")

    def encode(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        import torch

        stimuli = list(stimuli)
        if not stimuli:
            raise DataError(f"guidance plugin {self.name!r}: encode() was given no stimuli")
        self.check_stimuli(stimuli)
        self.network()
        lows, highs = [], []
        with torch.inference_mode():
            for start in range(0, len(stimuli), self.batch_size):
                feats = self.encode_batch(stimuli[start : start + self.batch_size])
                lows.append(np.asarray(feats.low, np.float32))
                highs.append(np.asarray(feats.high, np.float32))
                self._progress(len(feats.low))
        return GuidanceFeatures(low=np.concatenate(lows), high=np.concatenate(highs))

    def _progress(self, n: int) -> None:
        """A running count of encoded stimuli (and their rate) across the framework's calls."""
        self._encoded += n
        if self._bar is None:
            from tqdm.auto import tqdm

            # disable=None: shown on a terminal, silent in logs and tests
            self._bar = tqdm(desc=f"guidance {self.name}", unit="stimulus", leave=False, disable=None)
        self._bar.update(n)

    # -- provenance
    def provenance(self) -> dict[str, Any]:
        """Network, weights (file or random), feature definitions and library versions.

        Only locates the weights (no loading).  ``random_weights`` is always present.
        """
        facts: dict[str, Any] = {"plugin": self.name}
        facts.update(self.describe())
        try:
            facts.update(self.plan.provenance())
        except WeightsMissingError:
            # every feature came from the cache (whose key includes allow_random_weights: false), so
            # they were computed with real weights that are no longer where they were found
            facts.update({"random_weights": False, "weights": "not found now; features came from the feature cache"})
        facts.update({f"{k}_feature": v for k, v in self.feature_doc.items()})
        facts["libraries"] = {lib: version_of(lib) for lib in self.libraries}
        return facts

    def describe(self) -> dict[str, Any]:
        """Extra provenance facts (network name...)."""
        return {}

    def to_numpy(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()
