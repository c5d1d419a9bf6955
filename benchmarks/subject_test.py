"""The conservative paired test of a ``foundation bench`` table: subjects, not (seed, subject) pairs.

``foundation bench`` pairs every (seed, subject) of two rows; when the reference is deterministic (the
``ridge`` / ``aligned-ridge`` read-outs give one fit for every seed) its seeds are copies, and those pairs
overstate n. Here each subject's test mAP is averaged over the seeds of each row first, then every row is
compared with the reference over subjects (two-sided paired t-test, uncorrected), with how many subjects
it is better on.

    .venv/bin/python benchmarks/subject_test.py runs/bench-volume-early/synthetic_volume --reference ridge
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path


def subject_scores(runs: Path) -> dict[str, dict[str, list[float]]]:
    """``method -> subject -> [test mAP per seed]`` from every ``RUN/metrics.json`` under a bench directory
    (run directories are named ``<method>-seed<N>[-<dataset>-<subject>]``)."""
    scores: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for path in sorted(runs.glob("*/metrics.json")):
        method = path.parent.name.split("-seed")[0]
        for subject, metrics in json.loads(path.read_text())["test"]["per_subject"].items():
            scores[method][subject].append(metrics["mAP"])
    return scores


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from scipy.stats import ttest_rel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="a bench table's directory (OUT/<recipe stem>)")
    p.add_argument("--reference", default="ridge", help="the row every other row is compared with (default ridge)")
    args = p.parse_args(argv)
    scores = subject_scores(args.runs)
    if args.reference not in scores:
        print(f"error: no runs of {args.reference!r} under {args.runs} (rows: {sorted(scores)})", file=sys.stderr)
        return 2
    subjects = sorted(scores[args.reference])
    ref = np.array([np.mean(scores[args.reference][s]) for s in subjects])
    for method in sorted(scores):
        if method == args.reference:
            continue
        if set(scores[method]) != set(subjects):
            print(f"{method}: skipped, its subjects differ from {args.reference}'s")
            continue
        x = np.array([np.mean(scores[method][s]) for s in subjects])
        d = x - ref
        seeds = sorted({len(v) for v in scores[method].values()})
        print(f"{method}: seed-averaged ({'/'.join(map(str, seeds))} seeds) per subject vs {args.reference}, "
              f"n = {len(subjects)}: mean {x.mean():.4f} vs {ref.mean():.4f}, diff {d.mean():+.4f}, better on "
              f"{int((d > 0).sum())} of {len(d)}, p = {ttest_rel(x, ref).pvalue:.2g}")
    print("per subject (" + ", ".join(s.split("/")[-1] for s in subjects) + "):")
    for method in sorted(scores):
        if set(scores[method]) == set(subjects):
            print(f"  {method:24s} " + " ".join(f"{np.mean(scores[method][s]):.3f}" for s in subjects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
