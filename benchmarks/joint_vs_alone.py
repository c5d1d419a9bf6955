"""Does training one model on several datasets help or hurt each of them?

    python benchmarks/joint_vs_alone.py recipes/synthetic_multi.yaml --seeds 0 1 2 --jobs 2
    python benchmarks/joint_vs_alone.py recipes/synthetic_population.yaml --seeds 0 1 2 \\
        --variant shared-head=model.label_head=shared --baselines ridge
    python benchmarks/joint_vs_alone.py recipes/synthetic_population.yaml --override model.alignment=guidance-ridge \\
        --tag aligned --variant shared-head=model.label_head=shared --baselines

For a recipe with several datasets, trains (a) the joint model of the recipe (and of each
``--variant NAME=OVERRIDE[,OVERRIDE…]``) and (b) for each dataset, the same model on that dataset alone,
for ``round(steps × weight / Σ weights)`` steps (the number of steps the dataset gets in expectation
inside the joint run, so both see the same amount of that dataset's data), plus the per-subject
baselines of ``--baselines`` (``foundation bench`` methods, default the linear read-out ``ridge`` and
``ss-mlp``, one model per subject) on each dataset alone.  Per dataset it prints the table of
``foundation bench``: each row's test mAP / AUC / Hamming (mean over the dataset's subjects; mean ± std
over seeds) and its difference from CLIP-MUSED trained alone over (seed, subject) pairs, two-sided paired
t-test, Holm-corrected over the table's rows.  Finished runs (a ``metrics.json`` in their directory) are
reused; writes ``summary.json`` and ``results.md`` under ``--out``/<recipe>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def alone_recipes(recipe_path: str, out: Path, overrides: list[str] | None = None) -> dict[str, Path]:
    """Write one single-dataset recipe per dataset of ``recipe_path`` (with ``overrides``) under ``out``;
    returns id -> path."""
    from foundation.core.recipe import load_recipe, to_dict

    recipe = load_recipe(recipe_path, list(overrides or []))
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


def _renamed(jobs: list, name: str, label: str) -> list:
    """The same jobs under another row name (``summarise`` keys its rows by method name)."""
    return [dataclasses.replace(j, method=dataclasses.replace(j.method, name=name, label=label)) for j in jobs]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value[,key=value…]`` -> (NAME, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or "=" not in rest:
        raise SystemExit(f"--variant {text!r}: expected NAME=key=value[,key=value…]")
    return name, rest.split(",")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, help="threads per run (default: OMP_NUM_THREADS if set, else cores ÷ jobs)")
    p.add_argument("--out", default="runs/joint_vs_alone")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="another joint row: the recipe with these overrides (comma-separated)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to every run, joint and alone (e.g. model.alignment=guidance-ridge)")
    p.add_argument("--tag", default="", help="a name for this set of runs (their directory: OUT/RECIPE[-TAG])")
    p.add_argument("--baselines", nargs="*", default=["ridge", "ss-mlp"],
                   help="per-subject foundation bench methods run on each dataset alone (default: ridge ss-mlp)")
    args = p.parse_args(argv)

    from foundation.core.atomic import write_json
    from foundation.workflows.compare import markdown, plan_jobs, run_job, summarise, threads_per_run

    out = Path(args.out) / (Path(args.recipe).stem + (f"-{args.tag}" if args.tag else ""))
    alone = alone_recipes(args.recipe, out / "recipes", args.override)
    # the reference rows first (alone, then the per-subject baselines), the joint rows after them
    jobs = []
    for ds, path in alone.items():
        jobs += _renamed(plan_jobs(path, methods=["clip-mused"], seeds=args.seeds, out=out / f"{ds}-alone"),
                         "alone", "CLIP-MUSED, alone (reference)")
        if args.baselines:
            jobs += plan_jobs(path, methods=args.baselines, seeds=args.seeds, out=out / f"{ds}-alone")
    jobs += _renamed(plan_jobs(args.recipe, methods=["clip-mused"], seeds=args.seeds, out=out / "joint",
                               overrides=args.override), "joint", "CLIP-MUSED, joint")
    for text in args.variant:
        name, overrides = parse_variant(text)
        planned = plan_jobs(args.recipe, methods=["clip-mused"], seeds=args.seeds, out=out / f"joint-{name}",
                            overrides=[*args.override, *overrides])
        jobs += _renamed(planned, f"joint-{name}", f"CLIP-MUSED, joint, {name} ({', '.join(overrides)})")
    threads = threads_per_run(args.jobs, args.threads)
    todo = sum(not (j.run_dir / "metrics.json").is_file() for j in jobs)
    print(f"# {' '.join(sys.argv)}\n{len(jobs)} runs ({todo} to train), {args.jobs} at a time × {threads} threads",
          flush=True)
    t0 = time.perf_counter()

    def work(job):
        metrics = run_job(job, threads=threads)
        print(f"done {job.method.name} seed {job.seed}" + (f" {job.subject}" if job.subject else ""), flush=True)
        return metrics

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(work, jobs))
    summary = summarise(jobs, results, reference="alone")
    command = f"python benchmarks/joint_vs_alone.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    run_s = sum(r.get("train_seconds") or 0.0 for r in results)
    steps = ", ".join(f"{ds}: {yaml.safe_load(path.read_text())['train']['steps']}" for ds, path in alone.items())
    header = (f"`{command}`\n\n{len(jobs)} runs; their training took {run_s / 3600:.2f} h in all (sum over runs); "
              f"this invocation {(time.perf_counter() - t0) / 60:.1f} min wall ({args.jobs} jobs × {threads} threads, "
              f"reused runs not retrained). Alone: each dataset for round(steps × weight / Σ weights) steps of the "
              f"joint recipe ({steps}).")
    text = markdown(summary, header=header)
    (out / "results.md").write_text(text + "\n")
    write_json(out / "summary.json", {"command": command, "seeds": args.seeds, "summary": summary})
    print(text)


if __name__ == "__main__":
    main()
