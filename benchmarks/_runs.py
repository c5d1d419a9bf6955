"""Helpers shared by the benchmarks that train whole runs in subprocesses (imported as ``_runs``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_foundation(args: list[str], run_dir: Path, threads: int, *, module: str = "foundation",
                   options: tuple[str, ...] = ()) -> tuple[dict, float]:
    """``python -m MODULE ARGS run.dir=RUN_DIR --no-progress OPTIONS`` unless RUN_DIR has metrics.json (then
    it is reused).  ``module`` may name a closed-form baseline (``foundation.workflows.linear``); its own
    options go in ``options`` (after the dotted overrides, which argparse needs together).

    Returns ``(metrics, wall seconds)``; the seconds are NaN for a reused run.
    """
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text()), float("nan")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", module, *args, f"run.dir={run_dir}", "--no-progress", *options]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(metrics.read_text()), time.perf_counter() - t0


def fmt(values: list[float]) -> str:
    """``mean ± std`` to 3 decimals (just the value when there is one)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def subject_maps(split: dict) -> dict[str, float]:
    """``{subject: mAP}`` of one split block of a ``metrics.json`` (its ``per_subject`` figures)."""
    return {s: float(m["mAP"]) for s, m in split["per_subject"].items()}


def paired_summary(pairs: list[tuple[float, float]], unit: str) -> str:
    """``mean A vs B, diff, better on k of n UNIT pairs, paired t p`` of ``(ours, theirs)`` figures."""
    import numpy as np
    from scipy import stats

    ours, theirs = (np.array(v) for v in zip(*pairs))
    diff = ours - theirs
    return (f"mean {ours.mean():.4f} vs {theirs.mean():.4f}, diff {diff.mean():+.4f}, better on {(diff > 0).sum()} of "
            f"{len(diff)} {unit} pairs, paired t p = {stats.ttest_rel(ours, theirs).pvalue:.2g}")
