"""The ``foundation`` command line.

``foundation train RECIPE [key=value ...]``   build shards if missing, train, write metrics.json
``foundation shard RECIPE [key=value ...]``   only build (or reuse) the shards
``foundation finetune RUN_DIR RECIPE``          add RECIPE's new subjects to RUN_DIR's model, train only their tokens
``foundation bench RECIPE [--methods …]``      baselines, ablations and statistics over seeds
``foundation evaluate RUN_DIR [--split test]`` recompute metrics from the run's best weights
``foundation predict RUN_DIR INPUT [--subject S]`` decode labels of new scans of known subjects
``foundation plot RUN_DIR [--compare OTHER…]``  paper figures of a finished run (curves, attention, token RSMs)
``foundation plugins``                         list dataset and guidance plugins and their origin
"""

from __future__ import annotations

from foundation.core.openmp import default_wait_policy

default_wait_policy()  # before torch is imported

import argparse  # noqa: E402
import json
import logging
import sys
from collections.abc import Sequence

from foundation.core.errors import FoundationError


def _recipe(args: argparse.Namespace):
    from foundation.core.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from foundation.workflows.train import train

    path = train(_recipe(args), progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        _print_summary(path)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from foundation.workflows.finetune import finetune

    unfreeze = [part for item in args.unfreeze for part in item.split(",") if part]
    path = finetune(args.run_dir, _recipe(args), unfreeze=unfreeze, progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        _print_summary(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from foundation.workflows.compare import bench

    seeds: int | list[int] = args.seeds[0] if len(args.seeds) == 1 else args.seeds
    if isinstance(seeds, int) and seeds < 1:
        print(f"error: --seeds {seeds}: one number is a count of seeds (0..N-1) and must be ≥ 1; "
              f"to run only seed 0 write --seeds 1, for other seeds list several", file=sys.stderr)
        return 2
    path = bench(args.recipe, methods=args.methods, seeds=seeds, out=args.out, overrides=args.overrides,
                 subjects=args.subjects, jobs=args.jobs, reference=args.reference)
    print(f"results: {path}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from foundation.data.shards import build_shards

    for name, index in build_shards(_recipe(args), progress=not args.no_progress).items():
        counts = {split: sum(v.values()) for split, v in index.data["counts"].items()}
        print(f"{name}: {index.root}  samples {counts}  stimuli encoded {index.data['stimuli_encoded']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from foundation.workflows.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, split=args.split, output=args.output)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_subject",)}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from foundation.workflows.predict import format_predictions, predict_run, resolve_format

    records = predict_run(args.run_dir, args.input, subject=args.subject, dataset=args.dataset, output=args.output,
                          fmt=args.format, batch_size=args.batch_size, threshold=args.threshold, device=args.device,
                          progress=not args.no_progress)
    if args.output is None:
        sys.stdout.write(format_predictions(records, resolve_format(args.format, None)))
    else:
        print(f"{len(records)} predictions: {args.output}", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from foundation.workflows.figures import plot_run

    paths = plot_run(args.run_dir, out=args.out, compare=args.compare, split=args.split, fmt=args.format,
                     device=args.device, max_subjects=args.max_subjects or None)
    for path in paths:
        print(path)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from foundation.core.plugins import plugin_table

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

    text = "add the recipe's new subjects to a trained run's model and train only their tokens"
    p = sub.add_parser("finetune", help=text, description=text + " (backbone frozen; writes a new run directory)")
    p.add_argument("run_dir", help="the pre-trained run directory (holds best/)")
    p.add_argument("recipe", help="recipe naming the new subjects (datasets[].subjects) and the fine-tuning schedule")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=300 run.dir=runs/ft")
    p.add_argument("--unfreeze", action="append", default=[], metavar="PART",
                   help="also train this part for the recipe's datasets: head, adapter (repeat or comma-separate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_finetune)

    from foundation.workflows.compare import DEFAULT_METHODS, METHODS

    text = "train CLIP-MUSED, its baselines and ablations over seeds and compare them (resumable)"
    p = sub.add_parser("bench", help=text, description=text)
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help=f"rows: {', '.join(METHODS)}, or guidance:NAME[,HIGH] (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[3],
                   help="one number N: seeds 0..N-1; several: those seeds (default: 3)")
    p.add_argument("--subjects", nargs="+", help="per-subject methods: only these 'dataset/subject' ids")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (threads are split between them)")
    p.add_argument("--out", default="runs/bench", help="where runs and results go (default: %(default)s)")
    p.add_argument("--reference", default="clip-mused",
                   help="the row the paired tests compare every other row with (default: %(default)s)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("evaluate", help="recompute metrics of a run from its best weights")
    p.add_argument("run_dir", help="run directory (holds config.yaml and best/)")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="decode labels of new scans of subjects the run was trained on")
    p.add_argument("run_dir", help="run directory (holds best/)")
    p.add_argument("input", help="shard .tar or directory of them, .npy array (N, tokens, dim) or NIfTI (X, Y, Z, N)")
    p.add_argument("--subject", help="subject of a .npy/NIfTI input ('dataset/subject', or the bare id with one "
                                     "dataset); for shards: keep only this subject")
    p.add_argument("--dataset", help="the model's dataset the input belongs to (default: from the shards' "
                                     "index.json, or the model's only dataset)")
    p.add_argument("--output", help="write the predictions to this file (.json or .csv); default: JSON to stdout")
    p.add_argument("--format", choices=["json", "csv"], help="output format (default: from --output's suffix)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--threshold", type=float, default=0.5, help="labels above this probability are 'predicted'")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("plot", help="paper figures of a finished run (curves, token attention, token RSMs)")
    p.add_argument("run_dir", help="run directory (holds config.yaml, best/, metrics.json, checkpoints/)")
    p.add_argument("--out", help="folder for the figures (default RUN_DIR/plots)")
    p.add_argument("--compare", metavar="OTHER_RUN_DIR", nargs="+",
                   help="also plot per-subject mAP against this run's (several dirs with disjoint subjects, "
                        "e.g. one single-subject run each, are merged)")
    p.add_argument("--split", choices=["val", "test"], default="test",
                   help="samples to average attention over and metrics to compare (default test)")
    p.add_argument("--format", choices=["png", "pdf"], default="png", help="figure file format (default png)")
    p.add_argument("--device", default="cpu", help="torch device for the attention pass (default cpu)")
    p.add_argument("--max-subjects", type=int, default=8,
                   help="subjects per attention figure (default 8; 0 = all); the token RSMs show all")
    p.set_defaults(fn=cmd_plot)

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
