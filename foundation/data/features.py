"""Guidance features, computed once per unique stimulus and cached across shard builds.

A cache is a directory of ``chunk-NNNNN.npz`` files (``ids``, ``low``, ``high``; float16 features),
each written atomically; loading concatenates them.  Killing a build loses at most the chunk being
written.  The cache key covers the dataset (plugin + options) and the guidance plugin (+ options), so
changing either starts a fresh cache while other caches stay reusable.

``provenance.json`` records what produced the cached features (the guidance plugin's
:meth:`~foundation.core.api.GuidancePlugin.provenance`: weights file or random initialisation).  It
travels with the features into ``index.json``, and a plugin whose provenance differs (say, real
weights appeared where random ones were used) may not add features to the cache.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from foundation.core.api import GuidancePlugin, Stimulus
from foundation.core.atomic import atomic_open, remove_stale_tmp, write_json
from foundation.core.errors import DataError, PluginError


class FeatureCache:
    """Low/high features of one (dataset, guidance plugin) pair, keyed by stimulus id."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.directory)
        self._row: dict[str, int] = {}
        self._low: list[np.ndarray] = []
        self._high: list[np.ndarray] = []
        self._chunks = 0
        for path in sorted(self.directory.glob("chunk-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as z:
                    ids, low, high = z["ids"], z["low"], z["high"]
            except (OSError, ValueError, KeyError) as exc:
                raise DataError(f"feature cache chunk {path} is unreadable ({exc}); delete it to recompute") from exc
            self._append([str(i) for i in ids], low, high)
            self._chunks += 1
        self.encoded_now = 0  # stimuli encoded by this process (the rest came from disk)
        prov = self.directory / "provenance.json"
        self.provenance: dict | None = json.loads(prov.read_text()) if prov.is_file() else None

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, stimulus_id: str) -> bool:
        return stimulus_id in self._row

    def _append(self, ids: Sequence[str], low: np.ndarray, high: np.ndarray) -> None:
        base = sum(len(x) for x in self._low)
        for j, sid in enumerate(ids):
            self._row[sid] = base + j
        self._low.append(np.asarray(low, np.float16))
        self._high.append(np.asarray(high, np.float16))
        self._stacked = None

    def add(self, ids: Sequence[str], low: np.ndarray, high: np.ndarray) -> None:
        """Store features of new stimuli (written to disk before returning)."""
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(list(ids), dtype=str), low=np.asarray(low, np.float16),
                 high=np.asarray(high, np.float16))
        with atomic_open(self.directory / f"chunk-{self._chunks:05d}.npz") as fh:
            fh.write(buf.getvalue())
        self._chunks += 1
        self._append(ids, low, high)

    #: provenance facts that must agree for features to share one cache
    IDENTITY_KEYS = ("random_weights", "weights", "weights_bytes")

    def _check_provenance(self, plugin: GuidancePlugin) -> None:
        now = json.loads(json.dumps(plugin.provenance(), default=str))
        if self.provenance is None or not len(self):  # no feature cached yet: nothing to mix with
            write_json(self.directory / "provenance.json", now)
            self.provenance = now
            return
        differs = {k: (self.provenance.get(k), now.get(k)) for k in self.IDENTITY_KEYS
                   if self.provenance.get(k) != now.get(k)}
        if differs:
            raise PluginError(
                f"feature cache {self.directory} holds {plugin.name!r} features made with {differs} "
                f"(cached → now); mixing them would be silently wrong. Delete {self.directory} to recompute "
                f"every feature with the current weights")

    def dims(self) -> tuple[int, int]:
        """``(D_low, D_high)`` of the cached features."""
        return int(self._low[0].shape[1]), int(self._high[0].shape[1])

    def lookup(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(low (N, D_low), high (N, D_high))`` float16 for the given stimulus ids."""
        if getattr(self, "_stacked", None) is None:
            self._stacked = (np.concatenate(self._low), np.concatenate(self._high))
        rows = [self._row[s] for s in ids]
        return self._stacked[0][rows], self._stacked[1][rows]

    def ensure(self, ids: Sequence[str], plugin: GuidancePlugin,
               fetch: Callable[[Sequence[str]], list[Stimulus]], *, batch_size: int) -> None:
        """Encode (in batches) every id not yet cached; each unique id is encoded once."""
        todo = list(dict.fromkeys(s for s in ids if s not in self._row))
        if todo:
            self._check_provenance(plugin)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            stimuli = fetch(chunk)
            try:
                feats = plugin.encode(stimuli)
            except DataError:
                raise
            except Exception as exc:
                raise PluginError(f"guidance plugin {plugin.name!r} failed while encoding stimuli "
                                  f"{chunk[0]!r}…: {type(exc).__name__}: {exc}") from exc
            for level, arr in (("low", feats.low), ("high", feats.high)):
                if arr.ndim != 2 or arr.shape[0] != len(chunk):
                    raise PluginError(f"guidance plugin {plugin.name!r} returned {level} features of shape "
                                      f"{arr.shape} for {len(chunk)} stimuli; expected ({len(chunk)}, D)")
                if not np.isfinite(arr).all():
                    raise PluginError(f"guidance plugin {plugin.name!r} returned non-finite {level} "
                                      f"features for stimuli starting at {chunk[0]!r}")
            self.add(chunk, feats.low, feats.high)
            self.encoded_now += len(chunk)
