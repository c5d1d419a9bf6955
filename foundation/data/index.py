"""``index.json``: the table of contents of one dataset's shard directory.

Written last by :mod:`foundation.data.shards`, so a directory with an index is complete.  The loader
and the model are built from it alone: input kind and shape, label names, subjects, per-split shard
lists and counts, guidance feature sizes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.api import SPLITS, DatasetInfo
from foundation.core.errors import ShardError

FORMAT_VERSION = 1
INDEX_NAME = "index.json"


@dataclasses.dataclass
class ShardIndex:
    """Parsed ``index.json`` of one dataset's shard directory ``root``."""

    root: Path
    data: dict[str, Any]
    #: ``shards.url`` template (``{dir}``, ``{path}``): tars are read from there instead of ``root``
    url: str | None = None
    #: set by ``build_shards`` when the directory already existed and was reused, not built
    reused: bool = False

    def locate(self, rel: str) -> Path | str:
        """Where the tar ``rel`` (a path relative to ``root``) is read from: a local path or a URL."""
        if self.url is None:
            return self.root / rel
        return self.url.format(dir=self.root.name, path=rel)

    @property
    def dataset(self) -> str:
        return self.data["dataset"]

    @property
    def info(self) -> DatasetInfo:
        d = self.data
        return DatasetInfo(
            kind=d["kind"],
            label_names=tuple(d["label_names"]),
            subjects=tuple(d["subjects"]),
            token_shape=tuple(d["token_shape"]) if d.get("token_shape") else None,
            token_names=tuple(d["token_names"]) if d.get("token_names") else None,
            grid=tuple(d["grid"]) if d.get("grid") else None,
            extra=d.get("extra", {}),
        )

    def shards(self, split: str, subjects: set[str] | None = None) -> list[tuple[Path | str, int, str]]:
        """``(tar path or URL, sample count, subject)`` for every shard of ``split``, optionally filtered."""
        out = []
        for entry in self.data["shards"].get(split, []):
            if subjects is not None and entry["subject"] not in subjects:
                continue
            out.append((self.locate(entry["path"]), int(entry["count"]), entry["subject"]))
        return out

    def checksums(self) -> dict[str, dict[str, Any]]:
        """``{str(local tar path): {"sha256": …, "bytes": …}}`` of every tar whose checksum ``index.json``
        records (shards built before checksums have none; tars read from ``shards.url`` are not listed)."""
        if self.url is not None:
            return {}
        return {str(self.locate(e["path"])): {"sha256": e["sha256"], "bytes": e.get("bytes")}
                for split in SPLITS for e in self.data["shards"].get(split, []) if e.get("sha256")}

    def count(self, split: str, subjects: set[str] | None = None) -> int:
        return sum(c for _, c, _ in self.shards(split, subjects))

    def mask(self, subject: str) -> np.ndarray:
        """The subject's boolean brain mask ``(X, Y, Z)`` (volume datasets)."""
        rel = self.data.get("masks", {}).get(subject)
        if rel is None:
            raise ShardError(f"{self.root / INDEX_NAME}: no mask recorded for subject {subject!r}")
        path = self.root / rel
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ShardError(f"cannot read mask {path}: {exc}") from exc
        return mask.astype(bool)

    def voxel_positions(self, subject: str) -> np.ndarray:
        """``(V_s,)`` flat C-order grid positions of the subject's in-mask voxels, in the order the shards store them."""
        return np.flatnonzero(self.mask(subject).reshape(-1))

    def feature_dim(self, level: str) -> int:
        return int(self.data["guidance"][level]["dim"])


def read_index(root: str | Path, *, check_files: bool = True, url: str | None = None) -> ShardIndex:
    """Read and check ``root/index.json``; names the file and what is wrong on failure.

    ``url``: the ``shards.url`` template the tars are read from (then they are not looked for locally).
    """
    root = Path(root)
    path = root / INDEX_NAME
    if not path.is_file():
        raise ShardError(f"{path} not found: the shard directory is missing or its build did not finish "
                         f"(run `foundation shard RECIPE`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("format", "dataset", "kind", "label_names", "subjects", "shards", "counts", "guidance"):
        if key not in data:
            raise ShardError(f"{path} lacks the key {key!r}")
    if data["format"] != FORMAT_VERSION:
        raise ShardError(f"{path} has shard format {data['format']}, this foundation reads {FORMAT_VERSION}")
    if url is not None:
        bad = _template_problem(url)
        if bad:
            raise ShardError(f"shards.url {url!r}: {bad}")
        check_files = False
    index = ShardIndex(root, data, url=url)
    for split in SPLITS:
        listed = sum(int(e["count"]) for e in data["shards"].get(split, []))
        counted = sum(int(n) for n in data["counts"].get(split, {}).values())
        if listed != counted:
            raise ShardError(f"{path}: split {split!r} lists {listed} samples in its shards "
                             f"but counts {counted} per subject")
        if check_files:
            for tar, _, _ in index.shards(split):
                if not tar.is_file():
                    raise ShardError(f"{path} lists {tar.name} (split {split!r}) but {tar} does not exist")
    return index


def _template_problem(url: str) -> str | None:
    """Why ``url`` is not a usable ``shards.url`` template, or ``None``."""
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(url) if name is not None}
    except ValueError as exc:
        return f"not a format template ({exc})"
    if "path" not in fields:
        return "must contain {path} (the tar's path inside the dataset's shard directory)"
    unknown = sorted(fields - {"dir", "path"})
    if unknown:
        return f"unknown field(s) {unknown}; use {{dir}} and {{path}}"
    return None
