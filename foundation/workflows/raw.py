"""Raw scans → model tokens through the dataset plugin's own preprocessing (``foundation predict --raw``).

An ROI dataset plugin turns raw data into tokens at shard time, often with per-subject preprocessing
fitted then (the NSD plugin's PCA per ROI group, fitted on the subject's training trials and saved
next to the shards by :meth:`~foundation.core.api.DatasetPlugin.artifacts`).  A plugin that implements
:meth:`~foundation.core.api.DatasetPlugin.encode_raw` lets ``foundation predict RUN_DIR RAW --raw
--subject S`` decode new raw scans: the plugin is rebuilt from the run's ``config.yaml`` (its options
and seed; the raw dataset itself need not be on this machine) and given the file's array and the
shard directory the run was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foundation.core.api import DatasetPlugin
from foundation.core.errors import DataError, FoundationError, PluginError, RecipeError
from foundation.data.index import INDEX_NAME

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def load_raw(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file (no pickle) or of a NIfTI image (``np.asarray(img.dataobj)``)."""
    if path.name.endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            return np.asarray(nib.load(str(path)).dataobj)
        except Exception as exc:
            raise DataError(f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a plain .npy array ({type(exc).__name__}: {exc})") from exc
    raise DataError(f"{path}: raw input must be a .npy array or a NIfTI image ({', '.join(NIFTI_SUFFIXES)}); "
                    f"convert other formats to .npy in the layout the dataset plugin's encode_raw expects")


def run_dataset_plugin(run_dir: Path, dataset: str) -> DatasetPlugin:
    """The dataset plugin of ``dataset`` as the run's ``config.yaml`` configures it (``root`` is ``None``
    when the raw dataset is not on this machine)."""
    from foundation.core.recipe import load_recipe
    from foundation.data.shards import make_dataset_plugin

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FoundationError(f"{config} not found: raw input needs the run's recipe to rebuild the dataset "
                              f"plugin that made its shards")
    recipe = load_recipe(config, [f"run.dir={run_dir}"])
    for i, cfg in enumerate(recipe.datasets):
        if cfg.id == dataset:
            return make_dataset_plugin(cfg, seed=recipe.seed, path=f"{config}: datasets.{i}", require_root=False)
    raise RecipeError(f"{config} has no dataset {dataset!r} (it has {[c.id for c in recipe.datasets]})")


def raw_plugin(run_dir: Path, dataset: str, token_shape: tuple[int, int]) -> DatasetPlugin:
    """The run's dataset plugin of ``dataset``, if it implements ``encode_raw`` (else a :class:`PluginError`
    saying what ``predict`` takes instead)."""
    plugin = run_dataset_plugin(run_dir, dataset)
    if not type(plugin).takes_raw_input():
        raise PluginError(f"dataset plugin {plugin.name!r} (dataset {dataset!r}) does not implement encode_raw, "
                          f"so it cannot turn raw scans into tokens; give tokens (N, {token_shape[0]}, "
                          f"{token_shape[1]}) as a .npy array without --raw, or shards")
    return plugin


def raw_tokens(plugin: DatasetPlugin, input: Path, subject: str, token_shape: tuple[int, int], *,
               artifacts: Path, dataset: str) -> np.ndarray:
    """Tokens ``(N, n_tokens, token_dim)`` float32 of the raw scans in ``input`` of ``subject`` (bare id),
    made by ``plugin.encode_raw`` with the files in the shard directory ``artifacts``; shape checked."""
    from foundation.data.shards import plugin_errors

    raw = load_raw(input)
    with plugin_errors(f"dataset plugin {plugin.name!r} (dataset {dataset!r}) raised in encode_raw for subject "
                       f"{subject!r} and {input}", plugin):
        tokens = plugin.encode_raw(subject, raw, artifacts=artifacts)
    tokens = np.asarray(tokens)
    expected = tuple(token_shape)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected or not np.issubdtype(tokens.dtype, np.floating):
        raise PluginError(f"dataset plugin {plugin.name!r} encode_raw returned {tokens.dtype} {tokens.shape} for "
                          f"{input}; the model takes (N, {expected[0]}, {expected[1]}) floats "
                          f"(token_shape in {artifacts / INDEX_NAME})")
    if len(tokens) == 0:
        raise DataError(f"{input}: dataset plugin {plugin.name!r} found no scans in it")
    return tokens.astype(np.float32, copy=False)
