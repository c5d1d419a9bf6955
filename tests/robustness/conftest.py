"""Helpers of the bad-input battery (``tests/robustness``).

Every case of the battery goes through :func:`expect`: it asserts the *exact* error type, that the
message names each culprit (file, sample key, recipe key, subject), and records the message so that
``ROBUSTNESS_CASES=cases.md pytest tests/robustness`` writes the table of every case and its message
(the table in ``docs/RELIABILITY.md`` is made that way).  :func:`assert_nothing_half_written` checks
that a failure left no temporary file, no partial ``index.json`` / JSON file, no partial tar and no
partial checkpoint directory behind.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tarfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.core import plugins
from foundation.core.api import GuidanceFeatures, GuidancePlugin
from foundation.core.atomic import TMP_PREFIX
from foundation.core.hookspecs import hookimpl


def tiny_run_recipe(root: Path, *, run: Path | None = None):
    """A 4-step tiny recipe (checkpoints at steps 2 and 4) with shards under ``root``."""
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(root)
    d["train"].update(steps=4, eval_every=2, checkpoint_every=2, log_every=2)
    if run is not None:
        d["run"]["dir"] = str(run)
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    return recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (checkpoints at steps 2 and 4) in ``ROOT/run`` and its shards, under ``ROOT``."""
    from foundation.workflows.train import train

    root = tmp_path_factory.mktemp("trained")
    train(tiny_run_recipe(root, run=root / "run"), progress=False)
    return root


#: (case, test node id, error type, message) of every case run in this session
CASES: list[tuple[str, str, str, str]] = []


@pytest.fixture(scope="session", autouse=True)
def _write_case_table() -> Iterator[None]:
    """With ``ROBUSTNESS_CASES=<file>`` set, write every recorded case and its message there (Markdown)."""
    yield
    out = os.environ.get("ROBUSTNESS_CASES")
    if not out or not CASES:
        return
    import re

    lines = ["| case | test | error | message |", "|---|---|---|---|"]
    for case, node, kind, message in CASES:
        text = " ".join(message.split()).replace("|", "\\|")
        text = re.sub(r"/\S*?/pytest-\d+/[^/\s']+", "<tmp>", text)  # tmp_path → <tmp>
        lines.append(f"| {case} | `{node}` | `{kind}` | {text} |")
    Path(out).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared machine: one intra-op thread is many times faster than oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def expect(case: str, exc_type: type[BaseException], fn: Callable[[], Any], *culprits: str | os.PathLike,
           request: pytest.FixtureRequest | None = None) -> BaseException:
    """Run ``fn``; it must raise exactly ``exc_type`` whose message contains every culprit. Returns the error."""
    with pytest.raises(BaseException) as info:
        fn()
    err = info.value
    assert type(err) is exc_type, f"{case}: expected {exc_type.__name__}, got {type(err).__name__}: {err}"
    message = str(err)
    for culprit in culprits:
        assert str(culprit) in message, f"{case}: {str(culprit)!r} is not named in: {message}"
    node = request.node.nodeid.split("::", 1)[-1] if request is not None else ""
    CASES.append((case, node, exc_type.__name__, message))
    return err


def note(case: str, kind: str, message: str, *culprits: str | os.PathLike,
         request: pytest.FixtureRequest | None = None) -> None:
    """Record a case that recovers instead of raising (``kind``: ``warning``): ``message`` is what the user is
    told and must name every culprit."""
    for culprit in culprits:
        assert str(culprit) in message, f"{case}: {str(culprit)!r} is not named in: {message}"
    node = request.node.nodeid.split("::", 1)[-1] if request is not None else ""
    CASES.append((case, node, kind, message))


# --------------------------------------------------------------------------- nothing half-written


def tmp_leftovers(root: Path) -> list[Path]:
    """Leftovers of atomic writes (``.tmp-*``) anywhere under ``root``."""
    return sorted(Path(root).rglob(f"{TMP_PREFIX}*"))


def assert_nothing_half_written(*roots: Path, skip: tuple[Path, ...] = ()) -> None:
    """No temporary file, and every file that exists is complete.

    Every ``*.json`` parses, every ``*.tar`` reads to its end, every ``index.json`` passes
    :func:`~foundation.data.index.read_index`, every ``checkpoints/step-*`` holds its state file.
    ``skip``: files the test damaged on purpose.
    """
    from foundation.engine.checkpoint import STATE_NAME
    from foundation.data.index import read_index

    skipped = {Path(p).resolve() for p in skip}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        assert tmp_leftovers(root) == [], f"temporary files left under {root}"
        for path in root.rglob("*"):
            if path.resolve() in skipped or not path.is_file():
                continue
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".tar":
                with tarfile.open(path) as tar:
                    for member in tar:
                        tar.extractfile(member).read()
            if path.name == "index.json" and path.parent.name != "_features":
                read_index(path.parent, check_files=False)  # complete and self-consistent
        for ckpt in root.rglob("checkpoints/step-*"):
            assert (ckpt / STATE_NAME).is_file(), f"partial checkpoint {ckpt}"


def tree_bytes(root: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root`` (for byte-identity checks)."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part in exclude for part in p.relative_to(root).parts)}


# --------------------------------------------------------------------------- a full disk, simulated


class FullDisk:
    """A file-like wrapper whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, fh, budget: int) -> None:
        self._fh, self._left = fh, budget

    def write(self, data) -> int:
        n = len(data)
        if n > self._left:
            self._fh.write(data[: self._left])  # what fitted is on disk: half a file
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def full_disk_open(budget: int, *, when: Callable[[str], bool] = lambda name: True):
    """An ``open`` whose files (those ``when(path)`` selects) hit ENOSPC after ``budget`` bytes."""
    import builtins

    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax") and when(str(file)):
            return FullDisk(fh, budget)
        return fh

    return fake_open


# --------------------------------------------------------------------------- malicious pickles


class Payload:
    """Unpickling this object calls ``os.mkdir(marker)``: if the marker exists, code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def npy_pickle_bytes(marker: Path) -> bytes:
    """A ``.npy`` file holding an object array whose element runs code when unpickled."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def torch_pickle(path: Path, marker: Path, *, wrap: Callable[[Any], Any] = lambda p: {"state": p}) -> None:
    """A ``torch.save`` file whose unpickling (without ``weights_only``) runs code."""
    import torch

    torch.save(wrap(Payload(marker)), path)


# --------------------------------------------------------------------------- plugins for the tests


class HashGuidance(GuidancePlugin):
    """Deterministic 4-d features from the stimulus id alone: works for any dataset plugin."""

    name = "robustness-hash"
    batch_size = 64

    def encode(self, stimuli):
        import hashlib

        rows = [np.frombuffer(hashlib.sha256(s.id.encode()).digest()[:8], np.uint8).astype(np.float32) / 255
                for s in stimuli]
        feats = np.stack(rows)
        return GuidanceFeatures(low=feats[:, :4], high=feats[:, 4:])


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """A fresh plugin manager for one test (the previous one comes back after); ``register(*classes)``
    adds dataset/guidance classes as a module named explicitly would."""
    monkeypatch.setattr(plugins, "_manager", None)

    def register(*classes: type, name: str = "robustness-test-plugins") -> None:
        from foundation.core.api import DatasetPlugin

        module = types.ModuleType(name.replace("-", "_"))
        datasets = [c for c in classes if issubclass(c, DatasetPlugin)]
        guidance = [c for c in classes if issubclass(c, GuidancePlugin)]
        module.foundation_dataset_plugins = hookimpl(lambda: datasets)
        module.foundation_guidance_plugins = hookimpl(lambda: guidance)
        plugins.get_plugin_manager().register_origin(module, name, "tests/robustness/conftest.py")

    return register


# --------------------------------------------------------------------------- checksums


def reseal(directory: Path) -> None:
    """Rewrite every ``manifest.json`` under ``directory`` (the deepest first) after a test changed a file on
    purpose: a hostile edit that also updates the manifest, so that the check *behind* the checksums (shape,
    pickle, RNG state) is what the test exercises."""
    from foundation.core.integrity import MANIFEST_NAME, write_manifest

    for manifest in sorted(Path(directory).rglob(MANIFEST_NAME), key=lambda m: -len(m.parts)):
        write_manifest(manifest.parent)


def unseal_index(directory: Path) -> None:
    """Drop the tars' checksums from ``directory/index.json``, as in shards built before checksums (or read
    from ``shards.url``): the reader's per-sample checks are then the only line, as the test wants."""
    path = Path(directory) / "index.json"
    data = json.loads(path.read_text())
    for entries in data["shards"].values():
        for entry in entries:
            entry.pop("sha256", None)
            entry.pop("bytes", None)
    path.write_text(json.dumps(data))


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
