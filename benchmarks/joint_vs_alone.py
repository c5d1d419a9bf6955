"""Does training one model on several datasets help or hurt each of them?

    python benchmarks/joint_vs_alone.py recipes/synthetic_multi.yaml --seeds 0 1 2 --jobs 2

For a recipe with several datasets, trains (a) the joint model of the recipe and (b) for each
dataset, the same model on that dataset alone, for ``round(steps × weight / Σ weights)`` steps
(the number of steps the dataset gets in expectation inside the joint run, so both see the same
amount of that dataset's data).  Reports each dataset's test mAP / AUC (mean over its subjects and
pooled) as mean ± std over seeds, the paired difference joint − alone, and the wall time.  Finished
runs (a metrics.json in their directory) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from _runs import fmt, run_foundation


def alone_recipes(recipe_path: str, out: Path) -> dict[str, Path]:
    """Write one single-dataset recipe per dataset of ``recipe_path`` under ``out``; returns id -> path."""
    from foundation.core.recipe import load_recipe, to_dict

    recipe = load_recipe(recipe_path)
    total = sum(ds.weight for ds in recipe.datasets)
    paths = {}
    for ds in recipe.datasets:
        d = to_dict(recipe)
        d["name"] = f"{recipe.name}-{ds.id}-alone"
        d["datasets"] = [x for x in d["datasets"] if (x.get("name") or x["plugin"]) == ds.id]
        d["datasets"][0]["weight"] = 1.0
        d["train"]["steps"] = max(1, round(recipe.train.steps * ds.weight / total))
        path = out / f"{ds.id}-alone.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        paths[ds.id] = path
    return paths


def subject_mean(metrics: dict, dataset: str, key: str) -> float:
    rows = [v[key] for s, v in metrics["test"]["per_subject"].items() if s.startswith(dataset + "/")]
    return statistics.fmean(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/joint_vs_alone")
    args = p.parse_args()
    out = Path(args.out) / Path(args.recipe).stem
    alone = alone_recipes(args.recipe, out / "recipes")
    jobs = [("joint", args.recipe, seed) for seed in args.seeds]
    jobs += [(ds, path, seed) for ds, path in alone.items() for seed in args.seeds]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def work(job):
        what, recipe, seed = job
        return job, run_foundation(["train", str(recipe), f"seed={seed}"], out / f"{what}-seed{seed}", threads)

    print(f"# {' '.join(sys.argv)}", flush=True)
    results: dict[tuple[str, int], tuple[dict, float]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (what, _, seed), result in pool.map(work, jobs):
            results[(what, seed)] = result
            print(f"done {what} seed {seed} ({result[1]:.0f} s)", flush=True)

    lines = ["| dataset | training | subject-mean test mAP | pooled test mAP | test AUC | wall s (mean) |",
             "|---|---|---|---|---|---|"]
    summary: dict[str, dict] = {}
    for ds in alone:
        summary[ds] = {}
        for what in ("joint", ds):
            rows = [results[(what, s)] for s in args.seeds]
            subj = [subject_mean(m, ds, "mAP") for m, _ in rows]
            pooled = [m["test"]["per_dataset"][ds]["mAP"] for m, _ in rows]
            auc = [m["test"]["per_dataset"][ds]["AUC"] for m, _ in rows]
            secs = [t for _, t in rows if t == t]
            label = "joint" if what == "joint" else "alone"
            summary[ds][label] = {"subject_mAP": subj, "pooled_mAP": pooled, "AUC": auc, "seconds": secs}
            wall = f"{statistics.fmean(secs):.0f}" if secs else "reused"
            lines.append(f"| {ds} | {label} | {fmt(subj)} | {fmt(pooled)} | {fmt(auc)} | {wall} |")
        diff = [a - b for a, b in zip(summary[ds]["joint"]["subject_mAP"], summary[ds]["alone"]["subject_mAP"])]
        summary[ds]["joint_minus_alone"] = diff
        lines.append(f"| {ds} | joint − alone (paired) | {fmt(diff)} | | | |")
    print("\n".join(lines))
    (out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "datasets": summary}, indent=2))
    print(f"summary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
