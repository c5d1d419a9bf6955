"""Helpers of the shard and loader tests: tiny recipes under tmp_path and a dataset plugin with bad data."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.core import plugins
from foundation.core.api import Sample
from foundation.core.config import Recipe
from foundation.data import shards as shards_module
from foundation.core.hookspecs import hookimpl
from foundation.core.recipe import from_dict
from foundation_synthetic.plugin import SyntheticDataset
from foundation_synthetic.world import SyntheticOptions

#: a tiny NSD-like world: 3 subjects x (27 train + 3 val) own stimuli + 10 shared test stimuli
ROI = {"n_subjects": 3, "stimuli_per_subject": 30, "shared_test": 10, "n_rois": 3, "token_dim": 8}
#: a tiny HCP-like world: 2 subjects watching the same 60 s movie on a 6x7x6 grid
VOLUME = {"mode": "volume", "n_subjects": 2, "grid": [6, 7, 6], "seconds": 60}


def make_recipe(root: Path, options: dict[str, Any] | None = None, *, plugin: str = "synthetic",
                name: str | None = None, samples_per_shard: int = 7, seed: int = 0) -> Recipe:
    """A recipe of one dataset whose shards go under ``root`` (always a tmp_path)."""
    dataset: dict[str, Any] = {"plugin": plugin, "options": dict(ROI if options is None else options)}
    if name is not None:
        dataset["name"] = name
    return from_dict(Recipe, {
        "seed": seed,
        "datasets": [dataset],
        "guidance": {"low": "planted", "high": "planted"},
        "shards": {"root": str(root), "samples_per_shard": samples_per_shard},
    })


def tmp_leftovers(root: Path) -> list[Path]:
    """Every leftover of an atomic write (``.tmp-*``) anywhere under ``root``."""
    return sorted(Path(root).rglob(".tmp-*"))


def rewrite_tar(path: Path, transform: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite the tar at ``path`` member by member; ``transform`` returns new bytes or None to drop."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, payload in members:
            new = transform(info.name, payload)
            if new is None:
                continue
            info.size = len(new)
            tar.addfile(info, io.BytesIO(new))


def tar_keys(path: Path) -> list[str]:
    """Sample keys of a tar, in order."""
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers()]
    return list(dict.fromkeys(n[: n.index(".", n.rfind("/"))] for n in names))  # webdataset: key = up to the first dot


# --------------------------------------------------------------------------- a plugin with bad data


@dataclasses.dataclass(frozen=True)
class BadOptions(SyntheticOptions):
    """The synthetic world, with one thing wrong at sample ``at`` of ``subject``."""

    corrupt: str = ""  # nan | inf | label_width | fmri_shape | duplicate_index | index_type | raise | mask_shape
    subject: str = "sub-02"
    at: int = 5


class BadDataset(SyntheticDataset):
    """The synthetic dataset with one planted defect (see :class:`BadOptions`)."""

    name = "bad-synthetic"
    Options = BadOptions
    description = "synthetic world with a planted defect (tests only)"

    def samples(self, subject: str) -> Iterator[Sample]:
        o = self.options
        for s in super().samples(subject):
            if subject == o.subject and s.index == o.at:
                s = _corrupt(s, o.corrupt)
            yield s

    def mask(self, subject: str) -> np.ndarray | None:
        mask = super().mask(subject)
        if mask is not None and self.options.corrupt == "mask_shape" and subject == self.options.subject:
            return mask[:, :-1]
        return mask


def _corrupt(s: Sample, what: str) -> Sample:
    fmri = np.array(s.fmri, dtype=np.float32, copy=True)
    if what == "nan":
        fmri.flat[3] = np.nan
        return dataclasses.replace(s, fmri=fmri)
    if what == "inf":
        fmri.flat[0] = -np.inf
        return dataclasses.replace(s, fmri=fmri)
    if what == "label_width":
        return dataclasses.replace(s, labels=np.concatenate([s.labels, [0]]))
    if what == "fmri_shape":
        return dataclasses.replace(s, fmri=fmri[..., :-1])
    if what == "duplicate_index":
        return dataclasses.replace(s, index=s.index - 1)
    if what == "index_type":
        return dataclasses.replace(s, index=str(s.index))
    if what == "raise":
        raise RuntimeError("the raw file is unreadable")
    return s


@pytest.fixture
def register_datasets(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Register extra dataset plugin classes for one test (the previous plugin manager comes back after)."""
    monkeypatch.setattr(plugins, "_manager", None)

    def register(*classes: type) -> None:
        module = types.ModuleType("foundation_test_bad_data")

        def foundation_dataset_plugins() -> list[type]:
            return list(classes)

        module.foundation_dataset_plugins = hookimpl(foundation_dataset_plugins)
        plugins.get_plugin_manager().register_origin(module, "test-bad-data", "tests/data/conftest.py")

    return register


@pytest.fixture
def small_write_buffer(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make the shard writer flush every 4 samples, so tars are open (half-written) while reading goes on."""
    monkeypatch.setattr(shards_module, "_WRITE_BUFFER", 4)
    return 4
