"""Is a finished shard directory still what its recipe would build today?

The shard directory's name hashes the recipe's *declarations* (plugin name and ``version``, options,
root path, guidance): a directory is reused whenever they match.  What they do not cover — the
plugin's code being edited, or the raw files under ``datasets[].root`` being replaced — is recorded
separately in ``index.json["built"]`` when the directory is written (:func:`build_record`), and
compared when it is reused (:func:`stale_reasons`).  A difference is a warning, not a rebuild: the
directory name, and so every existing shard directory, stays valid for an unchanged recipe.
``foundation shard --rebuild`` / ``foundation train --rebuild`` rebuild on request.

``index.json["built"]`` (no timestamp, so that a resumed build stays byte-identical to an uninterrupted
one: *when* is the modification time of ``index.json``, written last)::

    {"dataset_plugin": {"name": "nsd", "version": "1", "origin": "foundation 0.1.0 (entry point …)",
                        "code": {"path": ".../foundation_nsd", "files": 9, "sha256": "…"}},
     "guidance": {"low": {…same for the guidance plugin…}, "high": {…}},
     "raw": {"root": "/data/NSD", "files": 812, "bytes": 123456789, "sha256": "…",
             "newest": "2026-11-30T08:00:00Z", "complete": true}}

``code.sha256`` hashes every ``.py`` file of the package that defines the plugin class (or its module
file when it is not in a package); ``raw.sha256`` hashes the relative path, size and modification time
of every file under the root (file contents are not read: that would take as long as the build).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Any

from foundation.core.errors import source_folder

#: at most this many raw files are listed into the digest (a huge tree is summarised by its first ones)
MAX_RAW_FILES = 200_000


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def code_record(cls: type) -> dict[str, Any]:
    """``{"path", "files", "sha256"}`` of the source of the package (or module) that defines ``cls``."""
    where = source_folder(cls)
    if where is None or not where.exists():
        return {"path": None, "files": 0, "sha256": None}
    files = sorted(where.rglob("*.py")) if where.is_dir() else [where]
    files = [f for f in files if "__pycache__" not in f.parts]
    digest = hashlib.sha256()
    for f in files:
        rel = f.relative_to(where).as_posix() if where.is_dir() else f.name
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return {"path": str(where), "files": len(files), "sha256": digest.hexdigest()}


def raw_record(root: Path | None) -> dict[str, Any] | None:
    """Sizes and modification times of the files under ``root`` (a file root: that file), summarised;
    ``None`` without a root (a plugin that generates its data)."""
    if root is None:
        return None
    root = Path(root)
    entries: list[tuple[str, int, int]] = []
    complete = True
    if root.is_file():
        st = root.stat()
        entries.append((root.name, st.st_size, st.st_mtime_ns))
    else:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:  # a dangling link or a file removed meanwhile
                    continue
                entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
                if len(entries) >= MAX_RAW_FILES:
                    complete = False
                    break
            if not complete:
                break
    digest = hashlib.sha256()
    for rel, size, mtime in entries:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    newest = max((m for _, _, m in entries), default=None)
    return {"root": str(root), "files": len(entries), "bytes": sum(s for _, s, _ in entries),
            "sha256": digest.hexdigest(), "newest": _utc(newest / 1e9) if newest is not None else None,
            "complete": complete}


def _plugin_record(plugin: Any, kind: str) -> dict[str, Any]:
    from foundation.core import plugins

    registry = plugins.dataset_plugins() if kind == "dataset" else plugins.guidance_plugins()
    entry = registry.get(plugin.name)
    return {"name": plugin.name, "version": str(plugin.version),
            "origin": entry.origin if entry is not None else None, "code": code_record(type(plugin))}


def build_record(dataset_plugin: Any, guidance: dict[str, Any]) -> dict[str, Any]:
    """``index.json["built"]``: by which plugin code, from which raw files (see the module doc)."""
    return {
        "dataset_plugin": _plugin_record(dataset_plugin, "dataset"),
        "guidance": {level: _plugin_record(g, "guidance") for level, g in guidance.items()},
        "raw": raw_record(dataset_plugin.root),
    }


def built_at(directory: Path) -> str | None:
    """When the shard directory was finished: its ``index.json``'s modification time, UTC."""
    try:
        return _utc((Path(directory) / "index.json").stat().st_mtime)
    except OSError:
        return None


def describe_build(built: dict[str, Any] | None, directory: Path) -> str:
    """``"built 2026-12-01T22:51:07Z by dataset plugin 'nsd' version 1 from foundation 0.1.0 (…)"``."""
    when = built_at(directory) or "at an unknown time"
    if not built:
        return f"built {when} (by an older foundation, which recorded no plugin code)"
    p = built.get("dataset_plugin", {})
    origin = f" from {p['origin']}" if p.get("origin") else ""
    return f"built {when} by dataset plugin {p.get('name')!r} version {p.get('version')}{origin}"


def stale_reasons(built: dict[str, Any] | None, dataset_plugin: Any, guidance: dict[str, Any]) -> list[str]:
    """What differs between the recorded build and today's plugin code and raw files (empty: nothing
    found, or a directory written before build records existed: nothing to compare)."""
    if not built:
        return []
    reasons = []
    now = {"dataset": _plugin_record(dataset_plugin, "dataset"),
           **{level: _plugin_record(g, "guidance") for level, g in guidance.items()}}
    then = {"dataset": built.get("dataset_plugin", {}), **built.get("guidance", {})}
    changed: dict[tuple[str, str, str], list[str]] = {}  # (path, old sha, new sha) → plugins in that package
    seen: set[str] = set()
    for key, cur in now.items():
        old = then.get(key) or {}
        what = f"{'dataset' if key == 'dataset' else 'guidance'} plugin {cur['name']!r}"
        if what in seen:
            continue
        seen.add(what)
        old_code = (old.get("code") or {}).get("sha256")
        if old_code and cur["code"]["sha256"] and old_code != cur["code"]["sha256"]:
            changed.setdefault((cur["code"]["path"], old_code, cur["code"]["sha256"]), []).append(what)
        if old.get("origin") and cur["origin"] and old["origin"] != cur["origin"]:
            reasons.append(f"{what} now comes from {cur['origin']} (was {old['origin']})")
    for (path, old_code, new_code), whats in changed.items():  # one reason per package edited
        reasons.insert(0, f"the code of {' and '.join(whats)} changed since the build ({path}: sha256 "
                          f"{old_code[:12]} then, {new_code[:12]} now)")
    old_raw, new_raw = built.get("raw"), raw_record(dataset_plugin.root)
    if old_raw and new_raw and old_raw.get("sha256") != new_raw["sha256"]:
        reasons.append(f"the raw files under {new_raw['root']} changed since the build ({old_raw.get('files')} "
                       f"files, {old_raw.get('bytes')} bytes, newest {old_raw.get('newest')} then; "
                       f"{new_raw['files']} files, {new_raw['bytes']} bytes, newest {new_raw['newest']} now)")
    return reasons
