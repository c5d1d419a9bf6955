"""What the closed-form baselines (``srm``, ``ridge``/``logistic``) share: their run directory and shards,
and their ``python -m`` entry point, which ``foundation bench`` launches like a training run."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from foundation.core.errors import FoundationError, report


@contextlib.contextmanager
def prepare_run(recipe, *, progress: bool) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Hold the run directory, build (or find) the recipe's shards, then create the run directory with its
    marker and ``config.yaml``; yields ``(run_dir, {dataset id: ShardIndex})`` and releases the directory
    when the block ends.

    The same rules as :class:`~foundation.engine.trainer.Trainer`: the run directory's lock (a second
    process stops with :class:`~foundation.core.errors.BusyError` naming the holder) is the first write, a
    folder foundation did not make or one made by another recipe is refused untouched, and nothing is
    written into the run directory before the shards are there."""
    from foundation.core.atomic import remove_stale_tmp, write_json
    from foundation.core.locks import hold
    from foundation.core.recipe import save_recipe
    from foundation.data.shards import build_shards, find_shards
    from foundation.engine.trainer import RUN_MARKER, check_run_dir, run_dir_for

    run_dir = run_dir_for(recipe)
    lock = hold(run_dir, what="run directory")
    try:
        check_run_dir(run_dir, recipe)
        indices = find_shards(recipe) or build_shards(recipe, progress=progress)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / RUN_MARKER).is_file():
            write_json(run_dir / RUN_MARKER, {"made_by": "foundation", "recipe": recipe.name})
        remove_stale_tmp(run_dir)
        save_recipe(recipe, run_dir / "config.yaml")
        yield run_dir, indices
    finally:
        lock.release()


def main(argv: Sequence[str] | None, *, prog: str, description: str,
         add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[Any, argparse.Namespace, bool], Path]) -> int:
    """``python -m PROG RECIPE [key=value ...] [method options] [--no-progress] [--traceback]``: run, print the
    metrics path.

    ``run(recipe, args, progress)`` fits the baseline and returns its ``metrics.json``; a
    :class:`FoundationError` is printed as ``foundation`` prints it (``error: …``, its chained traceback with
    ``--traceback``) and its exit status returned."""
    from foundation.core.recipe import load_recipe

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    add_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--traceback", action="store_true",
                   help="on an error print its full chained traceback before the one-line message")
    args = p.parse_args(argv)
    try:
        path = run(load_recipe(args.recipe, args.overrides), args, not args.no_progress)
    except FoundationError as exc:
        return report(exc, full_traceback=args.traceback, flag="--traceback")
    print(f"metrics: {path}")
    return 0
