"""What the closed-form baselines (``srm``, ``ridge``/``logistic``) share: their run directory and shards,
and their ``python -m`` entry point, which ``foundation bench`` launches like a training run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from foundation.core.errors import FoundationError


def prepare_run(recipe, *, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Create the run directory with its ``config.yaml`` and build (or find) the recipe's shards.

    Returns ``(run_dir, {dataset id: ShardIndex})``."""
    from foundation.core.recipe import save_recipe
    from foundation.data.shards import build_shards, find_shards
    from foundation.engine.trainer import run_dir_for

    run_dir = run_dir_for(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / "config.yaml")
    return run_dir, find_shards(recipe) or build_shards(recipe, progress=progress)


def main(argv: Sequence[str] | None, *, prog: str, description: str,
         add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[Any, argparse.Namespace, bool], Path]) -> int:
    """``python -m PROG RECIPE [key=value ...] [method options] [--no-progress]``: run, print the metrics path.

    ``run(recipe, args, progress)`` fits the baseline and returns its ``metrics.json``; a
    :class:`FoundationError` is printed as ``error: …`` with exit status 2."""
    from foundation.core.recipe import load_recipe

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    add_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        path = run(load_recipe(args.recipe, args.overrides), args, not args.no_progress)
    except FoundationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"metrics: {path}")
    return 0
