"""``foundation shard``: convert each dataset of a recipe into WebDataset tars + ``index.json``.

Layout of one dataset's shard directory ``<shards.root>/<dataset>-<hash>/``::

    index.json                 written last: the directory is complete iff it exists
    train/<subject>-0000.tar   one tar per (split, subject, chunk of samples_per_shard samples)
    val/…  test/…
    masks/<subject>.npy        volume datasets: the subject's boolean brain mask (X, Y, Z)
    _parts/<subject>.json      per-subject manifest, written when all its tars are done

Each sample (one presentation of one stimulus to one subject) has the key
``<dataset>/<subject>/<index>`` and the members ``fmri.npy`` (float16; ROI ``(tokens, dim)``, volume
in-mask voxels ``(V,)``), ``labels.npy`` (uint8 multi-hot ``(C,)``), ``low.npy`` / ``high.npy``
(float16 guidance features) and ``json`` (dataset, subject, stimulus, split, index).

Every file is written atomically; a rerun skips subjects whose manifest exists, so an interrupted
build resumes where it stopped and a finished one is reused as is.  Tars are byte-reproducible
(fixed mtime, fixed member order).

Length (~620 lines, over the ~400 guide): planning, the crash-safe per-subject build and the index are
one pipeline whose invariants (write order, resume, fingerprint) are easier to check in one file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.api import SPLITS, DatasetInfo, DatasetPlugin, GuidancePlugin, Sample
from foundation.core.atomic import TMP_PREFIX, atomic_open, remove_stale_tmp, write_json
from foundation.core.integrity import ALGORITHM, HashingWriter
from foundation.core.locks import hold
from foundation.core.config import DatasetConfig, Recipe
from foundation.core.convert import from_dict, to_dict
from foundation.core.errors import (
    DataError,
    FoundationError,
    PluginError,
    RecipeError,
    exception_text,
    source_folder,
    write_error,
)
from foundation.core.progress import progress as progress_bar
from foundation.core.recipe import recipe_hash
from foundation.data.features import FeatureCache
from foundation.data.index import FORMAT_VERSION, INDEX_NAME, ShardIndex, read_index
from foundation.data.staleness import build_record, describe_build, stale_reasons

log = logging.getLogger(__name__)

#: samples gathered before their missing guidance features are encoded and they are written
_WRITE_BUFFER = 512


@dataclasses.dataclass
class DatasetBuild:
    """Everything needed to build (or find) one dataset's shards."""

    config: DatasetConfig
    plugin: DatasetPlugin
    guidance: dict[str, GuidancePlugin]  # level ("low"/"high") → plugin instance
    fingerprint: dict[str, Any]
    directory: Path


def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def make_dataset_plugin(cfg: DatasetConfig, *, seed: int, path: str, require_root: bool = True) -> DatasetPlugin:
    """Instantiate the dataset plugin named by ``cfg`` with validated options.

    ``require_root=False``: a ``root`` that is not on this machine is passed as ``None`` instead of
    being an error (``foundation predict --raw`` needs only the options and the shard artifacts).
    """
    from foundation.core.plugins import get_dataset_plugin

    cls = get_dataset_plugin(cfg.plugin)
    options = from_dict(cls.Options, cfg.options, path=f"{path}.options")
    options = single_subject_options(cls, options, cfg)
    root = None
    if cfg.root is not None:
        root = Path(cfg.root).expanduser().resolve()
        if not root.exists():
            if require_root:
                raise RecipeError(f"{path}.root: {root} does not exist (dataset {cfg.id!r}, plugin {cfg.plugin!r})")
            root = None
    try:
        return cls(options, root=root, seed=seed)
    except (DataError, RecipeError):
        raise
    except Exception as exc:
        raise PluginError(f"dataset plugin {cfg.plugin!r} failed to initialise: "
                          f"{exception_text(exc, within=source_folder(cls))}") from exc


def single_subject_options(cls: type[DatasetPlugin], options: Any, cfg: DatasetConfig) -> Any:
    """A one-subject recipe of a plugin whose validation draw spans its subjects reads that subject
    alone, so the draw (and the subject's validation set) is its own (see
    :attr:`~foundation.api.DatasetPlugin.subjects_option`)."""
    name = cls.subjects_option
    if not name or not cfg.subjects or len(cfg.subjects) != 1 or getattr(options, name, None) is not None:
        return options
    log.info("dataset %r narrowed to subject %s: %s.%s=%s, so its validation set is drawn from that subject alone",
             cfg.id, cfg.subjects[0], cfg.plugin, name, list(cfg.subjects))
    return dataclasses.replace(options, **{name: list(cfg.subjects)})


def make_guidance_plugins(recipe: Recipe) -> dict[str, GuidancePlugin]:
    """One instance per distinct guidance plugin, mapped per level."""
    from foundation.core.plugins import get_guidance_plugin

    g = recipe.guidance
    unknown = set(g.options) - {g.low, g.high}
    if unknown:
        raise RecipeError(f"guidance.options.{sorted(unknown)[0]}: options given for a guidance plugin that "
                          f"is not used (low: {g.low!r}, high: {g.high!r})")
    instances: dict[str, GuidancePlugin] = {}
    for name in dict.fromkeys([g.low, g.high]):
        cls = get_guidance_plugin(name)
        options = from_dict(cls.Options, g.options.get(name, {}), path=f"guidance.options.{name}")
        try:
            instances[name] = cls(options, device=_device(), allow_random_weights=g.allow_random_weights)
        except Exception as exc:
            if isinstance(exc, (DataError, RecipeError, PluginError, FileNotFoundError)):
                raise
            raise PluginError(f"guidance plugin {name!r} failed to initialise: "
                              f"{exception_text(exc, within=source_folder(cls))}") from exc
    return {"low": instances[g.low], "high": instances[g.high]}


def _fingerprint_options(plugin: DatasetPlugin) -> dict[str, Any]:
    """The plugin's options as the shard fingerprint holds them (``fingerprint_omits_defaults`` at default left out)."""
    options = to_dict(plugin.options)
    fields = {f.name: f for f in dataclasses.fields(plugin.options)} if dataclasses.is_dataclass(plugin.options) else {}
    for name in plugin.fingerprint_omits_defaults:
        f = fields.get(name)
        if f is not None and f.default is not dataclasses.MISSING and options.get(name) == f.default:
            del options[name]
    return options


def plan(recipe: Recipe) -> list[DatasetBuild]:
    """Resolve plugins, options and the shard directory of every dataset of the recipe."""
    root = Path(recipe.shards.root)
    if root.exists() and not root.is_dir():
        raise RecipeError(f"shards.root: {root} exists and is not a directory")
    guidance = make_guidance_plugins(recipe)
    builds = []
    for i, cfg in enumerate(recipe.datasets):
        plugin = make_dataset_plugin(cfg, seed=recipe.seed, path=f"datasets.{i}")
        fingerprint = {
            "format": FORMAT_VERSION,
            "dataset": cfg.id,
            "plugin": cfg.plugin,
            "plugin_version": plugin.version,
            "seed": recipe.seed if plugin.seed_dependent else None,
            "root": str(plugin.root) if plugin.root else None,
            "options": _fingerprint_options(plugin),
            "guidance": {
                level: {"plugin": guidance[level].name, "version": guidance[level].version,
                        "options": to_dict(guidance[level].options),
                        "allow_random_weights": recipe.guidance.allow_random_weights}
                for level in ("low", "high")
            },
            "samples_per_shard": recipe.shards.samples_per_shard,
            # only when lenient, so the directories of strict (default) builds keep their names
            **({"on_bad_sample": "skip"} if recipe.shards.on_bad_sample == "skip" else {}),
        }
        directory = Path(recipe.shards.root) / f"{cfg.id}-{recipe_hash(fingerprint)}"
        builds.append(DatasetBuild(cfg, plugin, guidance, fingerprint, directory))
    return builds


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class _TarSink:
    """Writes one split of one subject into tars of at most ``limit`` samples, each atomically.

    A write that fails (disk full...) raises :class:`~foundation.core.errors.WriteError` naming the tar;
    the temporary file is removed and tars already renamed into place are complete.
    """

    def __init__(self, directory: Path, split: str, subject: str, limit: int) -> None:
        self.directory, self.split, self.subject, self.limit = directory, split, subject, limit
        self.done: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._out: HashingWriter | None = None  # the temporary file, hashed as it is written
        self._count = 0
        self._tmp: Path | None = None
        self._final: Path | None = None

    def _open(self) -> None:
        rel = Path(self.split) / f"{self.subject}-{len(self.done):04d}.tar"
        self._final = self.directory / rel
        self._tmp = self._final.with_name(f"{TMP_PREFIX}{self._final.name}.{os.getpid()}")
        try:
            self._final.parent.mkdir(parents=True, exist_ok=True)
            self._out = HashingWriter(open(self._tmp, "wb"))
            self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        except OSError as exc:
            if self._out is not None:
                self._out.close()
                self._out = None
            self._tmp.unlink(missing_ok=True)
            raise write_error(self._final, exc) from exc
        self._count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._tar is None:
            self._open()
        try:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                info.uname = info.gname = "foundation"
                self._tar.addfile(info, io.BytesIO(payload))
        except OSError as exc:
            self.abort()
            raise write_error(self._final, exc) from exc
        self._count += 1
        if self._count >= self.limit:
            self.close()

    def close(self) -> None:
        if self._tar is None:
            return
        tar, self._tar = self._tar, None
        out, self._out = self._out, None
        try:
            try:
                tar.close()  # writes the end blocks (through ``out``: hashed too)
                out.flush()
                os.fsync(out.fileno())
            finally:
                out.close()
            os.replace(self._tmp, self._final)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise write_error(self._final, exc) from exc
        self.done.append({"path": str(self._final.relative_to(self.directory)), "count": self._count,
                          "subject": self.subject, ALGORITHM: out.hexdigest(), "bytes": out.size})

    def abort(self) -> None:
        """Discard the tar being written (its temporary file); never raises for a failing close."""
        if self._tar is None:
            return
        tar, self._tar = self._tar, None
        out, self._out = self._out, None
        try:
            tar.close()  # writes the end blocks: may fail again on a full disk
        except OSError:
            pass
        finally:
            try:
                out.close()
            except OSError:
                pass
            self._tmp.unlink(missing_ok=True)


def sample_key(dataset: str, subject: str, index: Any) -> str:
    """The key ``dataset/subject/index`` of a sample, exactly as stored in the tars (index padded to 7 digits)."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
        return f"{dataset}/{subject}/{int(index):07d}"
    return f"{dataset}/{subject}/{index!r}"


@contextlib.contextmanager
def plugin_errors(what: str, plugin: Any) -> Iterator[None]:
    """Turn an unexpected exception raised inside ``plugin``'s code into a :class:`PluginError` saying
    ``what`` was being done, the exception and the plugin's line that raised it (chained, so ``-v``
    prints the full traceback); foundation's own errors pass through unchanged."""
    try:
        yield
    except FoundationError:
        raise
    except Exception as exc:
        raise PluginError(f"{what}: {exception_text(exc, within=source_folder(type(plugin)))}") from exc


def _plugin_samples(build: DatasetBuild, subject: str) -> Iterator[Sample]:
    """The plugin's samples of ``subject``; an unexpected exception raised inside the plugin becomes a
    :class:`PluginError` naming the plugin and the subject (foundation's own errors pass through)."""
    last = None
    try:
        for s in build.plugin.samples(subject):
            last = getattr(s, "index", None)
            yield s
    except FoundationError:
        raise
    except Exception as exc:
        after = "" if last is None else f" after sample {sample_key(build.config.id, subject, last)}"
        raise PluginError(f"dataset plugin {build.config.plugin!r} (dataset {build.config.id!r}) raised while "
                          f"reading subject {subject!r}{after}: "
                          f"{exception_text(exc, within=source_folder(type(build.plugin)))}") from exc


def check_sample(sample: Sample, info: DatasetInfo, *, n_voxels: int | None, key: str) -> None:
    """Raise :class:`DataError` naming ``key`` if the sample breaks the dataset's declared shapes."""
    if sample.split not in SPLITS:
        raise DataError(f"sample {key}: split {sample.split!r} is not one of {SPLITS}")
    if not isinstance(sample.stimulus, str) or not sample.stimulus:
        raise DataError(f"sample {key}: stimulus id must be a non-empty string, got {sample.stimulus!r}")
    fmri = np.asarray(sample.fmri)
    expected = tuple(info.token_shape) if info.kind == "roi" else (n_voxels,)
    if fmri.shape != expected:
        raise DataError(f"sample {key}: fMRI has shape {fmri.shape}, expected {expected} "
                        f"({'ROI tokens' if info.kind == 'roi' else 'in-mask voxels of the subject mask'})")
    if not (np.issubdtype(fmri.dtype, np.floating) or np.issubdtype(fmri.dtype, np.integer)):
        raise DataError(f"sample {key}: fMRI dtype {fmri.dtype} is not a real number type (expected float or int)")
    bad = ~np.isfinite(fmri)
    if bad.any():
        raise DataError(f"sample {key}: fMRI has {int(np.isnan(fmri).sum())} NaN and "
                        f"{int(np.isinf(fmri).sum())} Inf values (of {fmri.size})")
    if np.abs(fmri).max(initial=0) > 65504:
        raise DataError(f"sample {key}: fMRI values exceed the float16 range (max |x| = {np.abs(fmri).max():.3g}); "
                        f"normalise them in the dataset plugin")
    labels = np.asarray(sample.labels)
    if labels.shape != (info.num_labels,):
        raise DataError(f"sample {key}: label vector has shape {labels.shape}, expected ({info.num_labels},) "
                        f"for the dataset's {info.num_labels} label names")
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"sample {key}: labels must be 0/1 multi-hot, got values {np.unique(labels)[:5]}")


def _write_subject(build: DatasetBuild, info: DatasetInfo, subject: str, caches: dict[str, FeatureCache],
                   limit: int, progress: bool, on_bad_sample: str = "error") -> dict[str, Any]:
    """Write one subject's tars and manifest.  ``on_bad_sample="skip"``: a sample that fails the checks
    (:func:`check_sample`, index, subject) is left out, logged and listed in the manifest's ``skipped``;
    ``"error"`` (default): it stops the build with a :class:`DataError` naming it."""
    directory, plugin, ds = build.directory, build.plugin, build.config.id
    n_voxels = None
    manifest: dict[str, Any] = {"subject": subject}
    if info.kind == "volume":
        mask = plugin.mask(subject)
        if mask is None or np.asarray(mask).shape != tuple(info.grid):
            raise DataError(f"dataset {ds!r} subject {subject!r}: mask has shape "
                            f"{None if mask is None else np.asarray(mask).shape}, expected grid {tuple(info.grid)}")
        mask = np.asarray(mask, bool)
        n_voxels = int(mask.sum())
        if n_voxels == 0:
            raise DataError(f"dataset {ds!r} subject {subject!r}: mask is empty")
        with atomic_open(directory / "masks" / f"{subject}.npy") as fh:
            fh.write(_npy_bytes(mask))
        manifest["mask"] = f"masks/{subject}.npy"
        manifest["voxels"] = n_voxels
        with plugin_errors(f"dataset plugin {build.config.plugin!r} (dataset {ds!r}) raised in affine({subject!r})",
                           plugin):
            affine = plugin.affine(subject)
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.isfinite(affine).all():
                raise DataError(f"dataset {ds!r} subject {subject!r}: the plugin's affine must be a finite 4×4 "
                                f"matrix, got shape {affine.shape}")
            manifest["affine"] = affine.tolist()

    sinks = {split: _TarSink(directory, split, subject, limit) for split in SPLITS}
    seen: set[int] = set()
    skipped: list[dict[str, str]] = []
    buffer: list[Sample] = []

    def fetch(ids: Sequence[str]) -> list:
        with plugin_errors(f"dataset plugin {build.config.plugin!r} (dataset {ds!r}) raised in stimuli() for "
                           f"ids starting at {ids[0]!r}", plugin):
            stimuli = list(plugin.stimuli(ids))
        if [s.id for s in stimuli] != list(ids):
            raise PluginError(f"dataset plugin {build.config.plugin!r} returned stimuli out of order or missing "
                              f"for ids starting at {ids[0]!r}")
        return stimuli

    def flush() -> None:
        ids = [s.stimulus for s in buffer]
        for level in ("low", "high"):
            caches[level].ensure(ids, build.guidance[level], fetch, batch_size=build.guidance[level].batch_size)
        low, _ = caches["low"].lookup(ids)
        _, high = caches["high"].lookup(ids)
        for s, f_low, f_high in zip(buffer, low, high):
            key = sample_key(ds, s.subject, s.index)
            meta = {"dataset": ds, "subject": s.subject, "stimulus": s.stimulus, "split": s.split,
                    "index": int(s.index)}
            sinks[s.split].write(key, {
                "fmri.npy": _npy_bytes(np.asarray(s.fmri, np.float16)),
                "labels.npy": _npy_bytes(np.asarray(s.labels, np.uint8)),
                "low.npy": _npy_bytes(f_low),
                "high.npy": _npy_bytes(f_high),
                "json": json.dumps(meta, sort_keys=True).encode(),
            })
        buffer.clear()

    try:
        samples = _plugin_samples(build, subject)
        for s in progress_bar(samples, desc=f"{ds}/{subject}", unit="sample", leave=False, enabled=progress):
            key = sample_key(ds, subject, getattr(s, "index", "?"))
            try:
                index = getattr(s, "index", None)
                if not isinstance(index, (int, np.integer)) or isinstance(index, (bool, np.bool_)) or index < 0:
                    raise DataError(f"sample {key}: index must be a non-negative integer, got {index!r}")
                if s.subject != subject:
                    raise DataError(f"sample {key}: plugin yielded subject {s.subject!r} while reading {subject!r}")
                if s.index in seen:
                    raise DataError(f"sample {key}: duplicate sample index {s.index} for subject {subject!r}")
                check_sample(s, info, n_voxels=n_voxels, key=key)
            except DataError as exc:
                if on_bad_sample != "skip":
                    raise
                log.warning("shards.on_bad_sample=skip: leaving out %s", exc)
                skipped.append({"key": key, "reason": str(exc)})
                continue
            seen.add(s.index)
            buffer.append(s)
            if len(buffer) >= _WRITE_BUFFER:
                flush()
        if buffer:
            flush()
        for sink in sinks.values():
            sink.close()
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    if not seen:
        if skipped:
            raise DataError(f"dataset {ds!r} subject {subject!r}: all {len(skipped)} samples are bad and were "
                            f"skipped (shards.on_bad_sample: skip); the first: {skipped[0]['reason']}")
        raise DataError(f"dataset {ds!r} subject {subject!r}: the plugin yielded no samples")
    manifest["shards"] = {split: sinks[split].done for split in SPLITS}
    manifest["counts"] = {split: sum(e["count"] for e in sinks[split].done) for split in SPLITS}
    manifest["skipped"] = skipped
    write_json(directory / "_parts" / f"{subject}.json", manifest)
    return manifest


def _feature_dirs(build: DatasetBuild, recipe: Recipe) -> dict[str, Path]:
    """Level (``low``/``high``) → the guidance feature cache folder of this dataset (one folder when the
    same plugin serves both levels)."""
    feature_root = Path(recipe.shards.root) / "_features"
    dataset_key = recipe_hash({k: build.fingerprint[k] for k in ("plugin", "plugin_version", "seed", "root", "options")})
    out = {}
    for level in ("low", "high"):
        g = build.guidance[level]
        key = f"{build.config.id}-{g.name}-{recipe_hash({'d': dataset_key, 'g': build.fingerprint['guidance'][level]})}"
        out[level] = feature_root / key
    return out


def _remove(directory: Path) -> None:
    """Delete a shard directory or feature cache: its ``index.json`` first, so that an interrupted
    removal leaves an unfinished directory (rebuilt, never reused), then the rest."""
    if not directory.exists():
        return
    (directory / INDEX_NAME).unlink(missing_ok=True)
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        raise write_error(directory, exc) from exc


def reuse_message(build: DatasetBuild, index: ShardIndex) -> tuple[str, list[str]]:
    """``("reusing shards built <when> by <plugin version> in <dir>", [staleness warnings])``."""
    built = index.data.get("built")
    message = f"{build.config.id}: reusing shards {describe_build(built, build.directory)} in {build.directory}"
    reasons = stale_reasons(built, build.plugin, build.guidance)
    return message, reasons


def _report_reuse(build: DatasetBuild, index: ShardIndex, *, progress: bool) -> None:
    message, reasons = reuse_message(build, index)
    log.info("%s", message)
    if progress:
        print(message, file=sys.stderr)
    for reason in reasons:
        log.warning("%s: the shards in %s may be stale: %s; rebuild them with --rebuild (foundation shard/train "
                    "RECIPE --rebuild)", build.config.id, build.directory, reason)


def build_dataset(build: DatasetBuild, recipe: Recipe, *, progress: bool = True, rebuild: bool = False) -> ShardIndex:
    """Build (or reuse) one dataset's shards and return its index.

    A finished directory is reused, saying when and by which plugin it was built, with a warning when
    the plugin's code or the raw files changed since (:mod:`foundation.data.staleness`).
    ``rebuild=True`` deletes the directory and this dataset's guidance feature caches first.
    """
    directory = build.directory
    if rebuild:
        for folder in (directory, *dict.fromkeys(_feature_dirs(build, recipe).values())):
            if folder.exists():
                log.warning("--rebuild: deleting %s", folder)
                _remove(folder)
    if (directory / INDEX_NAME).is_file():
        index = read_index(directory)
        index.reused = True
        _report_reuse(build, index, progress=progress)
        return index
    # One builder per directory: a second process waits for the first (whose temporary tars it would
    # otherwise delete as stale), then finds the finished shards.
    lock = hold(directory, what="shard directory", wait=True)
    try:
        if (directory / INDEX_NAME).is_file():
            log.info("reusing the shards another process finished in %s", directory)
            return read_index(directory)
        return _build_dataset_locked(build, recipe, progress=progress)
    finally:
        lock.release()


def _build_dataset_locked(build: DatasetBuild, recipe: Recipe, *, progress: bool) -> ShardIndex:
    directory = build.directory
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    for sub in (directory, *[directory / s for s in SPLITS], directory / "masks", directory / "_parts"):
        remove_stale_tmp(sub)
    with plugin_errors(f"dataset plugin {build.config.plugin!r} (dataset {build.config.id!r}) raised in info()",
                       build.plugin):
        info = build.plugin.info()
    by_dir: dict[Path, FeatureCache] = {}
    caches: dict[str, FeatureCache] = {}
    for level, folder in _feature_dirs(build, recipe).items():
        if folder not in by_dir:  # the same plugin for both levels shares one cache: encoded once
            by_dir[folder] = FeatureCache(folder)
        caches[level] = by_dir[folder]

    manifests = {}
    bar = progress_bar(info.subjects, desc=f"shard {build.config.id}", unit="subject", enabled=progress)
    for subject in bar:
        part = directory / "_parts" / f"{subject}.json"
        if part.is_file():
            manifests[subject] = json.loads(part.read_text())
            continue
        manifests[subject] = _write_subject(build, info, subject, caches, recipe.shards.samples_per_shard, progress,
                                            recipe.shards.on_bad_sample)
    with plugin_errors(f"dataset plugin {build.config.plugin!r} (dataset {build.config.id!r}) raised in "
                       f"artifacts()", build.plugin):
        build.plugin.artifacts(directory)

    if not len(caches["low"]) or not len(caches["high"]):
        raise DataError(f"dataset {build.config.id!r}: no stimuli were encoded")
    dims = {"low": caches["low"].dims()[0], "high": caches["high"].dims()[1]}
    index = {
        "format": FORMAT_VERSION,
        "dataset": build.config.id,
        "plugin": build.config.plugin,
        "recipe_hash": recipe_hash(build.fingerprint),
        "fingerprint": build.fingerprint,
        "kind": info.kind,
        "token_shape": list(info.token_shape) if info.token_shape else None,
        "token_names": list(info.token_names) if info.token_names else None,
        "grid": list(info.grid) if info.grid else None,
        "label_names": list(info.label_names),
        "subjects": list(info.subjects),
        "extra": info.extra,
        "guidance": {
            level: {"plugin": build.guidance[level].name, "dim": dims[level],
                    "provenance": caches[level].provenance or build.guidance[level].provenance()}
            for level in ("low", "high")
        },
        "counts": {split: {s: manifests[s]["counts"][split] for s in info.subjects} for split in SPLITS},
        "shards": {split: [e for s in info.subjects for e in manifests[s]["shards"][split]] for split in SPLITS},
        "masks": {s: manifests[s]["mask"] for s in info.subjects if "mask" in manifests[s]},
        "voxels": {s: manifests[s]["voxels"] for s in info.subjects if "voxels" in manifests[s]},
        "affines": {s: manifests[s]["affine"] for s in info.subjects if "affine" in manifests[s]},
        "stimuli_encoded": {level: len(caches[level]) for level in ("low", "high")},
        "on_bad_sample": recipe.shards.on_bad_sample,
        "skipped": _skipped_summary(manifests, info.subjects),
        "built": build_record(build.plugin, build.guidance),
    }
    write_json(directory / INDEX_NAME, index)
    n = sum(sum(v.values()) for v in index["counts"].values())
    log.info("wrote %d samples of %s to %s in %.1fs", n, build.config.id, directory, time.perf_counter() - t0)
    return read_index(directory)


#: at most this many skipped samples are listed by key in index.json (all are counted)
_SKIPPED_LISTED = 1000


def _skipped_summary(manifests: dict[str, dict[str, Any]], subjects: Sequence[str]) -> dict[str, Any]:
    """``index.json["skipped"]``: samples left out by ``shards.on_bad_sample: skip``, counted and named."""
    per_subject = {s: len(manifests[s].get("skipped", [])) for s in subjects}
    listed = [e for s in subjects for e in manifests[s].get("skipped", [])][:_SKIPPED_LISTED]
    return {"count": sum(per_subject.values()), "per_subject": per_subject, "samples": listed}


def build_shards(recipe: Recipe, *, progress: bool = True, rebuild: bool = False) -> dict[str, ShardIndex]:
    """Build or reuse the shards of every dataset of ``recipe``; returns dataset id → index.

    ``rebuild=True``: delete each dataset's existing shard directory and guidance feature caches and
    build them again (after editing a plugin's code or its raw files).
    """
    from threadpoolctl import threadpool_limits

    # Plugins do their linear algebra (PCA, z-scoring) in numpy; with torch loaded, a multi-threaded
    # BLAS fights torch's OpenMP threads for the cores and runs many times slower than one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        return {b.config.id: build_dataset(b, recipe, progress=progress, rebuild=rebuild) for b in plan(recipe)}


def find_shards(recipe: Recipe) -> dict[str, ShardIndex] | None:
    """The finished shard indices of the recipe's datasets, or ``None`` if any is missing."""
    out = {}
    for b in plan(recipe):
        if not (b.directory / INDEX_NAME).is_file():
            return None
        out[b.config.id] = read_index(b.directory, url=recipe.shards.url)
    return out
