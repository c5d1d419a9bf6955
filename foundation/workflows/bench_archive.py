"""A bench archive: the small record of each finished ``foundation bench`` run, kept where runs are not.

A bench run directory holds checkpoints (tens of MB); a table needs only its ``metrics.json`` (a few KB).
``foundation bench --archive DIR`` copies, for every finished run, ``metrics.json`` and the resolved recipe
the run was planned with to ``DIR/<recipe stem>/<run name>/``.  A later ``bench`` (another machine, a clean
``runs/``) whose run is missing restores its ``metrics.json`` from the archive instead of retraining it —
but only when the archived recipe equals the one planned now (every key except ``run.dir`` and the other
keys that change no result, ``RESUMABLE_CHANGES``), so a changed
recipe, method or override is retrained, never silently reused.  A restored run directory holds
``metrics.json`` and nothing else (no checkpoint, no logs): tables can be rebuilt from it, figures cannot.

Layout::

    DIR/synthetic/clip-mused-seed0/metrics.json
    DIR/synthetic/clip-mused-seed0/recipe.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from foundation.core.atomic import atomic_open

#: the marker a restored run directory carries (its metrics.json came from the archive, not from training)
RESTORED = ".restored-from-archive"


def _comparable(recipe_text: str) -> dict[str, Any]:
    """The recipe with every key added to the schema since it was written at its default (as a resumed run
    takes them: a new key's default is what runs before it did) and without the keys that change no result
    (``run.dir``: where the run lives, not what it is; the loader and logging settings a run may also resume
    under: ``RESUMABLE_CHANGES``), so an archived run stays reusable when such a key is added or changed."""
    from foundation.core.recipe import with_defaults
    from foundation.engine.trainer import RESUMABLE_CHANGES

    d = with_defaults(yaml.safe_load(recipe_text) or {})
    for dotted in RESUMABLE_CHANGES:
        section, _, key = dotted.partition(".")
        if isinstance(d.get(section), dict):
            d[section].pop(key, None)
    return d


def _same_recipe(archived: Path, recipe_file: Path) -> bool:
    """Whether the archived ``recipe.yaml`` and the planned ``recipe_file`` describe the same run."""
    return _comparable(archived.read_text()) == _comparable(recipe_file.read_text())


def entry(archive: Path, run_dir: Path) -> Path:
    """The archive folder of a bench run ``OUT/<stem>/<tag>``: ``archive/<stem>/<tag>``."""
    return Path(archive) / run_dir.parent.name / run_dir.name


def restore(archive: Path, *, run_dir: Path, recipe_file: Path) -> bool:
    """Copy the archived ``metrics.json`` into ``run_dir`` if the archived recipe equals ``recipe_file``'s.

    Returns whether it did; a run that already has a ``metrics.json`` is left alone (False)."""
    if (run_dir / "metrics.json").is_file():
        return False
    src = entry(archive, run_dir)
    if not (src / "metrics.json").is_file() or not (src / "recipe.yaml").is_file():
        return False
    if not _same_recipe(src / "recipe.yaml", recipe_file):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESTORED).write_text(f"{src}\n")
    with atomic_open(run_dir / "metrics.json") as f:
        f.write((src / "metrics.json").read_bytes())
    return True


def conflict(archive: Path, *, run_dir: Path, recipe_file: Path) -> Path | None:
    """The archive entry of this run if it holds another recipe (saving would overwrite it), else None."""
    src = entry(archive, run_dir) / "recipe.yaml"
    if src.is_file() and not _same_recipe(src, recipe_file):
        return src.parent
    return None


def save(archive: Path, *, run_dir: Path, recipe_file: Path) -> None:
    """Archive a finished run's ``metrics.json`` and its planned recipe (each written atomically).

    An entry that already holds these metrics for the same recipe (a run restored from it) is left as it is:
    its ``recipe.yaml`` may have been written before keys were added to the schema, and rewriting it would
    change the user's archive for nothing."""
    dst = entry(archive, run_dir)
    metrics, recipe = dst / "metrics.json", dst / "recipe.yaml"
    if (metrics.is_file() and recipe.is_file() and metrics.read_bytes() == (run_dir / "metrics.json").read_bytes()
            and _same_recipe(recipe, recipe_file)):
        return
    dst.mkdir(parents=True, exist_ok=True)
    for src, name in ((run_dir / "metrics.json", "metrics.json"), (recipe_file, "recipe.yaml")):
        with atomic_open(dst / name) as f:
            f.write(src.read_bytes())


def is_restored(run_dir: str | Path) -> bool:
    """Whether ``run_dir``'s metrics came from an archive (no checkpoint or log to plot from)."""
    return (Path(run_dir) / RESTORED).is_file()


__all__ = ["RESTORED", "conflict", "entry", "is_restored", "restore", "save"]
