"""The ``foundation`` command line.

``foundation train RECIPE [key=value ...]``   build shards if missing, train, write metrics.json (--rebuild)
``foundation shard RECIPE [key=value ...]``   only build (or reuse) the shards (--rebuild: build them again)
``foundation finetune RUN_DIR RECIPE``          add RECIPE's new subjects to RUN_DIR's model, train only their tokens
``foundation bench RECIPE [--methods …]``      baselines, ablations and statistics over seeds
``foundation evaluate RUN_DIR [--split test]`` recompute metrics from the run's best weights
``foundation predict RUN_DIR INPUT [--subject S] [--raw]`` decode labels of new scans of known subjects
``foundation plot RUN_DIR [--compare OTHER…]``  paper figures of a finished run (curves, attention, token RSMs)
``foundation plugins [--check NAME]``          list dataset and guidance plugins and their origin, or check one
"""

from __future__ import annotations

from foundation.core.openmp import default_wait_policy

default_wait_policy()  # before torch is imported

import argparse  # noqa: E402
import json
import logging
import sys
from collections.abc import Sequence

from foundation.core.errors import FoundationError, report


def _recipe(args: argparse.Namespace):
    from foundation.core.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    recipe = _recipe(args)  # a bad recipe is reported before torch and accelerate are imported
    from foundation.workflows.train import train

    path = train(recipe, progress=not args.no_progress, rebuild=args.rebuild)
    from accelerate import PartialState

    if PartialState().is_main_process:
        _print_summary(path)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    recipe = _recipe(args)  # a bad recipe is reported before torch and accelerate are imported
    from foundation.workflows.finetune import finetune

    unfreeze = [part for item in args.unfreeze for part in item.split(",") if part]
    path = finetune(args.run_dir, recipe, unfreeze=unfreeze, token_init=args.token_init, zero_shot=args.zero_shot,
                    progress=not args.no_progress)
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
                 subjects=args.subjects, jobs=args.jobs, threads=args.threads, reference=args.reference,
                 archive=args.archive)
    print(f"results: {path}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from foundation.data.shards import build_shards

    from foundation.data.staleness import describe_build

    for name, index in build_shards(_recipe(args), progress=not args.no_progress, rebuild=args.rebuild).items():
        counts = {split: sum(v.values()) for split, v in index.data["counts"].items()}
        how = f"reused: {describe_build(index.data.get('built'), index.root)}" if index.reused else "built now"
        print(f"{name}: {index.root}  samples {counts}  stimuli encoded {index.data['stimuli_encoded']}  ({how})")
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
                          progress=not args.no_progress, raw=args.raw)
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
    if args.check is not None:
        from foundation.workflows.plugin_check import check_plugin

        for line in check_plugin(args.check, recipe_path=args.recipe, root=args.root, samples=args.samples):
            print(line)
        return 0
    if args.recipe is not None or args.root is not None:
        raise FoundationError("--recipe and --root go with --check NAME")
    from foundation.core.plugins import get_plugin_manager, plugin_table

    print(plugin_table())
    broken = get_plugin_manager().problems()
    if broken:  # listed as `broken` rows above; exit 1 so that a setup script or CI notices
        names = ", ".join(p.name for p in broken)
        print(f"{len(broken)} plugin package(s) or name(s) cannot be used: {names} (the `broken` rows above say "
              f"why; commands that need none of them still work)", file=sys.stderr)
        return 1
    return 0


def _print_summary(path) -> None:
    metrics = json.loads(path.read_text())
    test = metrics["test"]
    from foundation.objectives.scoring import is_subject_mean, pooled

    what = "mean over subjects" if is_subject_mean(test) else "pooled over subjects"
    print(f"test mAP {test['mAP']:.4f} ({what}; chance {test['chance_mAP']:.4f})  AUC {test['AUC']:.4f}  "
          f"Hamming {test['hamming']:.4f}  best step {metrics['best_step']}")
    if is_subject_mean(test):
        print(f"pooled test mAP {pooled(test):.4f}  AUC {pooled(test, 'AUC'):.4f}  "
              f"Hamming {pooled(test, 'hamming'):.4f}")
    print(f"metrics: {path}")


def _add_common(parser: argparse.ArgumentParser, *, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log at INFO level, and on an error print its full chained traceback (a plugin's "
                             "exception with its file and line) before the one-line message")
    parser.add_argument("--traceback", action="store_true", default=default,
                        help="on an error print its full chained traceback (without the INFO log)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundation", description=__doc__.splitlines()[0])
    _add_common(parser, default=False)
    # the same switches after the command name (`foundation train -v RECIPE`): SUPPRESS keeps a
    # subcommand that does not see them from resetting what was given before it
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(*args, **kwargs):
        return _add_parser(*args, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    for name, fn, text in (("train", cmd_train, "train (or resume) a recipe"),
                           ("shard", cmd_shard, "build the recipe's WebDataset shards")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("recipe", help="recipe YAML, e.g. recipes/synthetic.yaml")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 seed=1")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--rebuild", action="store_true",
                       help="delete the recipe's existing shard directories and guidance feature caches and build "
                            "them again (after editing a plugin's code or its raw data)")
        p.set_defaults(fn=fn)

    text = "add the recipe's new subjects to a trained run's model and train only their tokens"
    p = sub.add_parser("finetune", help=text, description=text + " (backbone frozen; writes a new run directory)")
    p.add_argument("run_dir", help="the pre-trained run directory (holds best/)")
    p.add_argument("recipe", help="recipe naming the new subjects (datasets[].subjects) and the fine-tuning schedule")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=300 run.dir=runs/ft")
    p.add_argument("--unfreeze", action="append", default=[], metavar="PART",
                   help="also train this part for the recipe's datasets: head, adapter (repeat or comma-separate)")
    p.add_argument("--token-init", choices=["random", "mean"], default=None,
                   help="new subjects' tokens start random (default; mean with --zero-shot) or at the mean of the "
                        "pre-trained subjects' tokens")
    p.add_argument("--zero-shot", action="store_true",
                   help="train nothing: score the new subjects with the mean token (and, with model.alignment, "
                        "their closed-form maps); saves the model as best/")
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
    p.add_argument("--threads", type=int, help="threads per run (default: OMP_NUM_THREADS if set, else cores ÷ jobs)")
    p.add_argument("--out", default="runs/bench", help="where runs and results go (default: %(default)s)")
    p.add_argument("--reference", default="clip-mused",
                   help="the row the paired tests compare every other row with (default: %(default)s)")
    p.add_argument("--archive", metavar="DIR",
                   help="copy each finished run's metrics.json and recipe to DIR, and restore a missing run from DIR "
                        "when its recipe is unchanged (tables survive a clean runs/ folder; default: no archive)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("evaluate", help="recompute metrics of a run from its best weights")
    p.add_argument("run_dir", help="run directory (holds config.yaml and best/)")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="decode labels of new scans of subjects the run was trained on")
    p.add_argument("run_dir", help="run directory (holds best/)")
    p.add_argument("input", help="shard .tar or directory of them, .npy array (N, tokens, dim) or NIfTI (X, Y, Z, N)")
    p.add_argument("--raw", action="store_true",
                   help="INPUT holds raw scans of --subject (.npy or NIfTI), turned into tokens by the ROI dataset "
                        "plugin's encode_raw with the files it saved next to the run's shards (e.g. NSD: one betas "
                        "session, PCA per ROI group); `foundation plugins` says which plugins take it")
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

    text = "list registered dataset and guidance plugins (and broken plugin packages), or check one"
    p = sub.add_parser("plugins", help=text, description=text)
    p.add_argument("--check", metavar="NAME", help="read a few samples and stimuli of dataset plugin NAME, or "
                   "encode a few stimuli with guidance plugin NAME, through the checks `foundation shard` applies")
    p.add_argument("--recipe", help="with --check: take options, root and seed from this recipe (default: the "
                                    "plugin's default options, no root, seed 0)")
    p.add_argument("--root", help="with --check: the dataset's root folder (replaces the recipe's)")
    p.add_argument("--samples", type=int, default=4, help="with --check: samples per subject (first two subjects) "
                                                          "and stimuli to read (default 4)")
    p.set_defaults(fn=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except FoundationError as exc:
        return report(exc, full_traceback=args.verbose or args.traceback)
