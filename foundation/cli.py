"""The ``foundation`` command line.

``foundation train RECIPE [key=value ...]``   build shards if missing, train, write metrics.json
``foundation shard RECIPE [key=value ...]``   only build (or reuse) the shards
``foundation evaluate RUN_DIR [--split test]`` recompute metrics from the run's best weights
``foundation plugins``                         list dataset and guidance plugins and their origin
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from foundation.errors import FoundationError


def _recipe(args: argparse.Namespace):
    from foundation.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from foundation.train import train

    path = train(_recipe(args), progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        _print_summary(path)
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from foundation.data.shards import build_shards

    for name, index in build_shards(_recipe(args), progress=not args.no_progress).items():
        counts = {split: sum(v.values()) for split, v in index.data["counts"].items()}
        print(f"{name}: {index.root}  samples {counts}  stimuli encoded {index.data['stimuli_encoded']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from foundation.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, split=args.split, output=args.output)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_subject",)}, indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from foundation.plugins import plugin_table

    print(plugin_table())
    return 0


def _print_summary(path) -> None:
    metrics = json.loads(path.read_text())
    test = metrics["test"]
    print(f"test mAP {test['mAP']:.4f} (chance {test['chance_mAP']:.4f})  AUC {test['AUC']:.4f}  "
          f"Hamming {test['hamming']:.4f}  best step {metrics['best_step']}")
    print(f"metrics: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundation", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, fn, text in (("train", cmd_train, "train (or resume) a recipe"),
                           ("shard", cmd_shard, "build the recipe's WebDataset shards")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("recipe", help="recipe YAML, e.g. recipes/synthetic.yaml")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 seed=1")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(fn=fn)

    p = sub.add_parser("evaluate", help="recompute metrics of a run from its best weights")
    p.add_argument("run_dir", help="run directory (holds config.yaml and best/)")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("plugins", help="list registered dataset and guidance plugins")
    p.set_defaults(fn=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except FoundationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
