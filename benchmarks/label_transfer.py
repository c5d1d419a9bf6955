"""Which labels does joint training move? Per-label test AP of runs, split by labels shared with another dataset.

    python benchmarks/label_transfer.py --dataset volume --other-labels-from roi \\
        alone=runs/joint_vs_alone/synthetic_population/volume-alone/clip-mused-seed{0,1,2} \\
        joint=runs/joint_vs_alone/synthetic_population/joint/clip-mused-seed{0,1,2}

Each ``NAME=RUN_DIR`` (repeat a name for its seeds) is scored on ``--dataset``'s test split of its own
shards: for every subject, the average precision of each label (scikit-learn; labels without a positive
test sample are skipped), then the mean over subjects.  Labels are grouped into those the dataset
shares, by name, with ``--other-labels-from``'s labels (read from the same run's model) and its own; the
table gives, per row, the mean over seeds of each group's mean AP and, for every row after the first,
its paired (seed) difference from the first row per group.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def per_label_ap(run_dir: Path, dataset: str) -> dict[str, float]:
    """Label name -> AP on ``dataset``'s test split, mean over subjects (run's best weights)."""
    from sklearn.metrics import average_precision_score

    from foundation.data.index import read_index
    from foundation.data.splits import read_split
    from foundation.engine.checkpoint import load_model
    from foundation.workflows.predict import predict_run

    model, _ = load_model(run_dir / "best")
    import json

    shards = Path(json.loads((run_dir / "metrics.json").read_text())["shards"][dataset])
    index = read_index(shards)
    names = list(model.infos[dataset].label_names)
    per_subject: dict[str, list[float]] = defaultdict(list)
    for subject in index.data["subjects"]:
        test = read_split(index, subject, "test")
        if not len(test):
            continue
        records = predict_run(run_dir, shards, subject=f"{dataset}/{subject}", progress=False)
        by_key = {r["key"]: [r["probabilities"][n] for n in names] for r in records}
        probs = np.array([by_key[k] for k in test.keys])
        for j, name in enumerate(names):
            if 0 < test.y[:, j].sum() < len(test.y):
                per_subject[name].append(float(average_precision_score(test.y[:, j], probs[:, j])))
    return {name: statistics.fmean(v) for name, v in per_subject.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--dataset", required=True, help="the dataset whose test split is scored")
    p.add_argument("--other-labels-from", required=True, help="the dataset whose label names count as shared")
    args = p.parse_args(argv)
    from foundation.engine.checkpoint import load_model

    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    shared: set[str] | None = None
    for item in args.runs:
        name, _, path = item.partition("=")
        run = Path(path)
        rows[name].append(per_label_ap(run, args.dataset))
        model, _ = load_model(run / "best")
        if args.other_labels_from in model.infos:
            shared = set(model.infos[args.other_labels_from].label_names)
        print(f"scored {name} {run}", file=sys.stderr, flush=True)
    if shared is None:
        raise SystemExit(f"no run's model has dataset {args.other_labels_from!r} (pass a joint run)")
    labels = sorted({k for r in rows.values() for ap in r for k in ap})
    groups = {"shared": [k for k in labels if k in shared], "own": [k for k in labels if k not in shared]}
    print(f"`python benchmarks/label_transfer.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    print(f"labels of {args.dataset!r} shared with {args.other_labels_from!r}: {groups['shared']}; its own: "
          f"{groups['own']}\n")
    print("| runs | seeds | mean AP, shared labels | mean AP, own labels | Δ shared vs first row | Δ own vs first row |")
    print("|---|---|---|---|---|---|")
    first = None
    for name, aps in rows.items():
        means = {g: [statistics.fmean(ap[k] for k in ks if k in ap) for ap in aps] for g, ks in groups.items()}
        cells = []
        for g in groups:
            v = means[g]
            cells.append(f"{statistics.fmean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else ""))
        deltas = ["", ""]
        if first is None:
            first = means
        else:
            for i, g in enumerate(groups):
                d = [a - b for a, b in zip(means[g], first[g])]
                deltas[i] = f"{statistics.fmean(d):+.3f} (per seed {', '.join(f'{x:+.3f}' for x in d)})"
        print(f"| {name} | {len(aps)} | {cells[0]} | {cells[1]} | {deltas[0]} | {deltas[1]} |")


if __name__ == "__main__":
    main()
