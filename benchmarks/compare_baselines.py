"""CLIP-MUSED vs. its baseline switches on one recipe, over several seeds.

    python benchmarks/compare_baselines.py recipes/synthetic.yaml --seeds 0 1 2 --jobs 2

Methods (all the same model code, switched by recipe keys):
  clip-mused  model.tokens=subject (a low and a high token per subject, RSA + orth losses)
  ms-smodel   model.tokens=shared  (no subject tokens: naive pooling of all subjects)
  ms-emb      model.tokens=identity, all λ = 0 (one identity token per subject, BCE only)
  ss          one model per subject (datasets.0.subjects=[s]), model.tokens=shared, all λ = 0

Finished runs (a metrics.json in their run directory) are reused. The table reports the mean over
subjects of each subject's test metrics (the only figure all methods share), as mean ± std over
seeds, plus the pooled test mAP of the multi-subject models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = {
    "clip-mused": ["model.tokens=subject"],
    "ms-smodel": ["model.tokens=shared"],
    "ms-emb": ["model.tokens=identity", "loss.lambda_orth=0", "loss.lambda_low=0", "loss.lambda_high=0"],
    "ss": ["model.tokens=shared", "loss.lambda_orth=0", "loss.lambda_low=0", "loss.lambda_high=0"],
}


def subjects_of(recipe: str) -> list[str]:
    from foundation.data.shards import build_shards
    from foundation.recipe import load_recipe

    index = next(iter(build_shards(load_recipe(recipe)).values()))
    return list(index.data["subjects"])


def run(recipe: str, out: Path, overrides: list[str], threads: int) -> tuple[Path, float]:
    metrics = out / "metrics.json"
    if metrics.is_file():
        return metrics, 0.0
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "foundation", "train", recipe, f"run.dir={out}", *overrides, "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return metrics, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for every run (e.g. datasets.0.options.noise=2)")
    p.add_argument("--ss-subjects", nargs="*", help="train single-subject models only for these subjects")
    args = p.parse_args()
    name = Path(args.recipe).stem
    subjects = subjects_of(args.recipe)
    jobs = []  # (method, seed, subject|None, run dir, overrides)
    for method in args.methods:
        for seed in args.seeds:
            base = [f"seed={seed}", *args.set, *METHODS[method]]
            if method == "ss":
                for s in args.ss_subjects or subjects:
                    jobs.append((method, seed, s, Path(args.out) / name / f"ss-{s}-seed{seed}",
                                 [*base, f"datasets.0.subjects=[{s}]"]))
            else:
                jobs.append((method, seed, None, Path(args.out) / name / f"{method}-seed{seed}", base))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: run(args.recipe, j[3], j[4], threads), jobs))
    wall = time.perf_counter() - t0

    table: dict[str, dict[int, dict[str, list[float]]]] = {}
    pooled: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for (method, seed, subject, _, _), (path, secs) in zip(jobs, done):
        m = json.loads(path.read_text())
        seconds.setdefault(method, []).append(secs)
        per = table.setdefault(method, {}).setdefault(seed, {"mAP": [], "AUC": [], "hamming": []})
        for sub, values in m["test"]["per_subject"].items():
            if args.ss_subjects and "ss" in args.methods and sub.split("/")[-1] not in args.ss_subjects:
                continue  # compare every method on the same subjects
            for k in per:
                per[k].append(values[k])
        if subject is None:
            pooled.setdefault(method, []).append(m["test"]["mAP"])

    def fmt(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

    print(f"\n{args.recipe}, seeds {args.seeds}: mean over subjects of per-subject test metrics (mean ± std over seeds)")
    print("| method | mAP ↑ | AUC ↑ | Hamming ↓ | pooled mAP ↑ | train s/run |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        cols = [fmt([statistics.mean(table[method][s][k]) for s in args.seeds]) for k in ("mAP", "AUC", "hamming")]
        pool_col = fmt(pooled[method]) if method in pooled else "–"
        ran = [x for x in seconds[method] if x > 0]
        secs = f"{statistics.mean(ran):.0f}" if ran else "reused"
        print(f"| {method} | {' | '.join(cols)} | {pool_col} | {secs} |")
    print(f"\nwall time {wall:.0f} s with {args.jobs} parallel jobs × {threads} threads; rerun: "
          f"python benchmarks/compare_baselines.py {args.recipe} --seeds {' '.join(map(str, args.seeds))}"
          + (f" --set {' '.join(args.set)}" if args.set else ""))


if __name__ == "__main__":
    main()
