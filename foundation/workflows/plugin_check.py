"""``foundation plugins --check NAME``: a smoke test for plugin authors.

Runs one plugin through the same validation ``foundation shard`` applies, on a few items, and says
what it saw — without writing shards. It is also the plugin contract test
(``tests/plugins/test_contract.py`` runs it over every built-in plugin; a third-party package calls
:func:`check_plugin` from its own tests, docs/PLUGINS.md):

* the **options** (:func:`check_options`): defaults build, round-trip, unknown keys refused;

* a **dataset plugin**: ``info()``; the first ``samples`` samples of each of the first two subjects
  (index, subject, split, stimulus id, fMRI shape and values, labels — :func:`check_sample`);
  ``mask()`` for volume datasets; ``stimuli()`` for their ids (order, image ``(H, W, 3) uint8``,
  text); whether it takes ``predict --raw``;
* a **guidance plugin**: ``encode()`` of a few stimuli (from the recipe's first dataset, else from
  the built-in ``synthetic`` dataset), twice: ``(N, D)`` finite float features, the same both times;
  ``needs`` present on the stimuli; ``provenance()`` JSON-serialisable.

Options, root and seed come from RECIPE when one is given (the dataset entry that uses the plugin,
``guidance.options``), else the plugin's default ``Options`` with no root (``--root DIR`` sets or
replaces it) and seed 0.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from foundation.core.api import DatasetInfo, DatasetPlugin, GuidancePlugin, Sample, Stimulus
from foundation.core.errors import DataError, PluginError, RecipeError


def _dataset_instance(name: str, recipe, root: str | Path | None = None) -> tuple[DatasetPlugin, str]:
    """The plugin instance and the dataset id its sample keys use."""
    from foundation.core.config import DatasetConfig
    from foundation.data.shards import make_dataset_plugin

    if recipe is not None:
        for i, cfg in enumerate(recipe.datasets):
            if cfg.plugin == name:
                if root is not None:
                    cfg = DatasetConfig(**{**cfg.__dict__, "root": str(root)})
                return make_dataset_plugin(cfg, seed=recipe.seed, path=f"datasets.{i}"), cfg.id
    cfg = DatasetConfig(plugin=name, root=None if root is None else str(root))
    return make_dataset_plugin(cfg, seed=0, path=f"plugin {name!r} (default options)"), cfg.id


def _guidance_instance(name: str, recipe) -> GuidancePlugin:
    from foundation.data.shards import _device, plugin_errors
    from foundation.core.plugins import get_guidance_plugin
    from foundation.core.convert import from_dict

    cls = get_guidance_plugin(name)
    given = recipe.guidance.options.get(name, {}) if recipe is not None else {}
    options = from_dict(cls.Options, given, path=f"guidance.options.{name}")
    allow = recipe.guidance.allow_random_weights if recipe is not None else False
    with plugin_errors(f"guidance plugin {name!r} raised when constructed", cls):
        return cls(options, device=_device(), allow_random_weights=allow)


def _describe_stimulus(s: Stimulus) -> str:
    parts = []
    if s.image is not None:
        parts.append(f"image {tuple(np.shape(s.image))} {np.asarray(s.image).dtype}")
    if s.text is not None:
        parts.append("text")
    if s.extras:
        parts.append(f"extras {sorted(s.extras)}")
    return ", ".join(parts) or "nothing (no image, text or extras)"


def _check_stimuli(plugin: DatasetPlugin, ids: list[str], where: str) -> list[Stimulus]:
    from foundation.data.shards import plugin_errors

    with plugin_errors(f"{where} raised in stimuli()", plugin):
        stimuli = list(plugin.stimuli(ids))
    if [getattr(s, "id", None) for s in stimuli] != ids:
        raise PluginError(f"{where}: stimuli({ids}) returned ids {[getattr(s, 'id', None) for s in stimuli]}; "
                          f"it must return one Stimulus per id, in the order given")
    for s in stimuli:
        if not isinstance(s, Stimulus):
            raise PluginError(f"{where}: stimuli() yielded {type(s).__name__}, not foundation.core.api.Stimulus")
        if s.image is not None:
            image = np.asarray(s.image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"{where}: stimulus {s.id!r} has an image of shape {image.shape} {image.dtype}; "
                                f"expected (H, W, 3) uint8")
        if s.text is not None and not isinstance(s.text, str):
            raise DataError(f"{where}: stimulus {s.id!r} has text of type {type(s.text).__name__}, not str")
    return stimuli


def check_dataset(name: str, *, recipe=None, root: str | Path | None = None,
                  samples: int = 4) -> tuple[list[str], list[Stimulus]]:
    """Check dataset plugin ``name``; returns report lines and the stimuli it gave (for a guidance check)."""
    from foundation.data.shards import check_sample, plugin_errors, sample_key

    plugin, dataset_id = _dataset_instance(name, recipe, root)
    where = f"dataset plugin {name!r}"
    with plugin_errors(f"{where} raised in info()", plugin):
        info = plugin.info()
    if not isinstance(info, DatasetInfo):
        raise PluginError(f"{where}: info() returned {type(info).__name__}, not foundation.core.api.DatasetInfo")
    if not info.subjects:
        raise DataError(f"{where}: info() lists no subjects")
    shape = f"token_shape {info.token_shape}" if info.kind == "roi" else f"grid {info.grid}"
    lines = [f"{where}: info(): {info.kind}, {shape}, {info.num_labels} labels, {len(info.subjects)} subjects "
             f"({', '.join(info.subjects[:5])}{', …' if len(info.subjects) > 5 else ''})"]
    ids: list[str] = []
    for subject in info.subjects[:2]:
        n_voxels = None
        if info.kind == "volume":
            with plugin_errors(f"{where} raised in mask({subject!r})", plugin):
                mask = plugin.mask(subject)
            if mask is None or np.asarray(mask).shape != tuple(info.grid):
                raise DataError(f"{where}: mask({subject!r}) has shape "
                                f"{None if mask is None else np.asarray(mask).shape}, expected the grid {info.grid}")
            n_voxels = int(np.asarray(mask, bool).sum())
            if n_voxels == 0:
                raise DataError(f"{where}: mask({subject!r}) is empty")
        seen: set[int] = set()
        splits: dict[str, int] = {}
        with plugin_errors(f"{where} raised while reading subject {subject!r}", plugin):
            got = list(itertools.islice(plugin.samples(subject), samples))
        if not got:
            raise DataError(f"{where}: samples({subject!r}) yielded nothing")
        for s in got:
            if not isinstance(s, Sample):
                raise PluginError(f"{where}: samples() yielded {type(s).__name__}, not foundation.core.api.Sample")
            key = sample_key(dataset_id, subject, s.index)
            if not isinstance(s.index, int) or isinstance(s.index, bool) or s.index < 0:
                raise DataError(f"sample {key}: index must be a non-negative integer, got {s.index!r}")
            if s.subject != subject:
                raise DataError(f"sample {key}: plugin yielded subject {s.subject!r} while reading {subject!r}")
            if s.index in seen:
                raise DataError(f"sample {key}: duplicate sample index {s.index} for subject {subject!r}")
            seen.add(s.index)
            check_sample(s, info, n_voxels=n_voxels, key=key)
            splits[s.split] = splits.get(s.split, 0) + 1
            ids.append(s.stimulus)
        voxels = f", {n_voxels} in-mask voxels" if n_voxels is not None else ""
        lines.append(f"{where}: samples({subject!r}): the first {len(got)} pass the shard checks "
                     f"(splits {splits}{voxels})")
    ids = list(dict.fromkeys(ids))
    stimuli = _check_stimuli(plugin, ids, where)
    lines.append(f"{where}: stimuli(): {len(stimuli)} returned in order ({_describe_stimulus(stimuli[0])})")
    if type(plugin).takes_raw_input():
        lines.append(f"{where}: encode_raw: implemented (predict --raw): "
                     f"{type(plugin).raw_input or 'raw_input does not say what input it takes'}")
    else:
        lines.append(f"{where}: encode_raw: not implemented (predict takes tokens, shards"
                     f"{' or NIfTI' if info.kind == 'volume' else ''})")
    return lines, stimuli


def check_guidance(name: str, *, recipe=None, samples: int = 4) -> list[str]:
    """Check guidance plugin ``name`` on a few stimuli; returns report lines."""
    plugin = _guidance_instance(name, recipe)
    where = f"guidance plugin {name!r}"
    if recipe is not None:
        source = recipe.datasets[0].plugin
        _, stimuli = check_dataset(source, recipe=recipe, samples=samples)
    else:
        source = "synthetic"
        _, stimuli = check_dataset(source, samples=samples)
    stimuli = stimuli[:samples]
    lines = [f"{where}: {len(stimuli)} stimuli from dataset plugin {source!r} ({_describe_stimulus(stimuli[0])})"]
    for need in type(plugin).needs:
        missing = [s.id for s in stimuli if (getattr(s, need, None) if need in ("image", "text")
                                              else s.extras.get(need)) is None]
        if missing:
            raise RecipeError(f"{where} needs {need!r} but stimuli {missing[:3]} of dataset plugin {source!r} lack "
                              f"it; check it with stimuli that have it (pass a recipe whose first dataset does)")
    from foundation.data.shards import plugin_errors

    feats = []
    for attempt in range(2):
        with plugin_errors(f"{where} raised in encode()", plugin):
            feats.append(plugin.encode(stimuli))
    for level in ("low", "high"):
        arr = np.asarray(getattr(feats[0], level))
        if arr.ndim != 2 or arr.shape[0] != len(stimuli):
            raise PluginError(f"{where} returned {level} features of shape {arr.shape} for {len(stimuli)} stimuli; "
                              f"expected ({len(stimuli)}, D)")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise PluginError(f"{where} returned {level} features that are not finite floats ({arr.dtype})")
        if not np.array_equal(arr, np.asarray(getattr(feats[1], level))):
            raise PluginError(f"{where} is not deterministic: two encode() calls on the same stimuli gave "
                              f"different {level} features (they are cached by stimulus id, so they must agree)")
    try:
        provenance = plugin.provenance()
        json.dumps(provenance)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where}: provenance() must return a JSON-serialisable dict: {exc}") from exc
    lines.append(f"{where}: encode(): low {feats[0].low.shape}, high {feats[0].high.shape}, finite, "
                 f"the same on a second call; provenance() {provenance}")
    return lines


def check_options(name: str) -> list[str]:
    """The options contract of plugin ``name``: defaults round-trip, an unknown key is a named error.

    * ``Options`` is a dataclass whose defaults build (``from_dict(Options, {})``);
    * ``to_dict`` then ``from_dict`` gives back an equal value (what ``index.json``/``config.yaml`` store
      is what a rerun reads), and the same shard hash;
    * an unknown key is a :class:`~foundation.core.errors.RecipeError` naming it.
    """
    import dataclasses

    from foundation.core import plugins
    from foundation.core.convert import from_dict, to_dict
    from foundation.core.recipe import recipe_hash

    lines = []
    for kind, registry in (("dataset", plugins.dataset_plugins()), ("guidance", plugins.guidance_plugins())):
        if name not in registry:
            continue
        cls = registry[name].cls
        where = f"{kind} plugin {name!r}"
        if not dataclasses.is_dataclass(cls.Options):
            raise PluginError(f"{where}: Options must be a dataclass, got {cls.Options!r}")
        try:
            options = from_dict(cls.Options, {}, path=f"{name}.options")
        except RecipeError as exc:
            raise PluginError(f"{where}: its Options defaults do not build: {exc}") from exc
        again = from_dict(cls.Options, to_dict(options), path=f"{name}.options")
        if again != options or recipe_hash(to_dict(again)) != recipe_hash(to_dict(options)):
            raise PluginError(f"{where}: Options do not round-trip through to_dict/from_dict: {options!r} -> {again!r}")
        try:
            from_dict(cls.Options, {"no_such_option_xyz": 1}, path=f"{name}.options")
        except RecipeError as exc:
            if "no_such_option_xyz" not in str(exc):
                raise PluginError(f"{where}: an unknown option's error does not name it: {exc}") from exc
        else:
            raise PluginError(f"{where}: Options accepted an unknown key (no_such_option_xyz)")
        lines.append(f"{where}: Options: defaults build, round-trip through to_dict/from_dict, unknown keys refused")
    if not lines:
        raise RecipeError(f"no dataset or guidance plugin named {name!r}")
    return lines


def check_plugin(name: str, *, recipe_path: str | Path | None = None, overrides=(), root: str | Path | None = None,
                 samples: int = 4) -> list[str]:
    """Run the checks of the plugin named ``name`` (dataset, guidance or both); returns the report lines.

    Raises the first :class:`~foundation.core.errors.FoundationError` a check meets (it names the plugin)."""
    from foundation.core import plugins
    from foundation.core.recipe import load_recipe

    recipe = load_recipe(recipe_path, list(overrides)) if recipe_path is not None else None
    kinds = [k for k, reg in (("dataset", plugins.dataset_plugins()), ("guidance", plugins.guidance_plugins()))
             if name in reg]
    if not kinds:  # raises: unknown name, the closest match of the likelier kind, broken packages
        import difflib

        guidance_like = difflib.get_close_matches(name, list(plugins.guidance_plugins()), n=1, cutoff=0.5)
        dataset_like = difflib.get_close_matches(name, list(plugins.dataset_plugins()), n=1, cutoff=0.5)
        if guidance_like and not dataset_like:
            plugins.get_guidance_plugin(name)
        plugins.get_dataset_plugin(name)
    lines = check_options(name)
    for kind in kinds:
        entry = (plugins.dataset_plugins() if kind == "dataset" else plugins.guidance_plugins())[name]
        lines.append(f"{kind} plugin {name!r} from {entry.origin}")
        lines += (check_dataset(name, recipe=recipe, root=root, samples=samples)[0] if kind == "dataset"
                  else check_guidance(name, recipe=recipe, samples=samples))
    lines.append(f"ok: {name!r} passed (options from {recipe_path or 'the plugin defaults'})")
    return lines
