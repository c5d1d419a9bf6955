"""Data efficiency of new subjects: tokens-only fine-tuning vs. single-subject and linear baselines.

    python benchmarks/finetune_efficiency.py recipes/synthetic.yaml --holdout sub-08 sub-09 sub-10 \\
        --seeds 0 1 2 --fractions 0.05 0.1 0.25 1 --jobs 2 --set model.alignment=guidance-ridge

The ``--holdout`` subjects are left out of pre-training (the recipe's first dataset minus them).  Then,
for each fraction of the held-out subjects' training data (``--fractions``; the same fixed subset of
samples for every method, ``datasets[].train_fraction``):

* **finetune**: ``foundation finetune`` adds the held-out subjects (their two tokens, and their
  alignment maps when ``model.alignment`` is set) to the pre-trained model and trains only the tokens
  (backbone frozen); all held-out subjects are onboarded in one run, each scored on its own test split;
* **scratch**: a single-subject model trained from scratch on the same samples, one per held-out
  subject (the ``ss`` baseline of `foundation bench`: the same network with shared tokens, BCE only;
  seeds ``--scratch-seeds``, default ``--seeds``);
* **zero-shot**: ``foundation finetune --zero-shot`` — no training step: the new tokens at the mean of
  the pre-trained subjects' (with ``model.alignment``, their maps still fitted on the same samples);
* **linear**: the per-subject ridge read-out of `foundation bench` (method ``ridge``) on the same samples
  (closed form, deterministic: one value per subject);

and, as the ceiling, **joint**: the model pre-trained with the subjects all along (100 % of their data).
Every figure is the mean over held-out subjects × seeds of each subject's test mAP; ``finetune / joint``
is the mean of the per-(subject, seed) ratios; paired t-tests (finetune vs scratch, vs linear, over
(subject, seed) pairs; Holm-corrected over all comparisons of the table).  Writes ``summary.json`` +
``efficiency.md`` and a plot ``efficiency.png`` into ``--out``.  Finished runs are reused; ``--tag`` names
the pre-training/fine-tuning runs (e.g. one tag per alignment method) while scratch and linear runs,
which do not depend on it, are shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _runs import run_foundation

SCRATCH = ["model.tokens=shared", "loss.lambda_orth=0", "loss.lambda_low=0", "loss.lambda_high=0"]


def subjects_of(recipe: str, overrides: list[str]) -> list[str]:
    from foundation.core.recipe import load_recipe
    from foundation.data.shards import build_shards

    index = next(iter(build_shards(load_recipe(recipe, overrides), progress=False).values()))
    return list(index.data["subjects"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--holdout", nargs="+", default=None,
                   help="subjects held out of pre-training and onboarded (default: the last)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.25, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--scratch-seeds", type=int, nargs="*", default=None,
                   help="seeds of the single-subject scratch models (default: --seeds; none: skip them)")
    p.add_argument("--scratch-fractions", type=float, nargs="*", default=None,
                   help="fractions at which to train the scratch models (default: every fraction below 1)")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--finetune-lr", type=float, default=3e-3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/finetune_efficiency")
    p.add_argument("--tag", default="", help="prefix of the pre-training and fine-tuning run names")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for the pre-training/joint/fine-tuning runs (e.g. model.alignment=…)")
    args = p.parse_args()

    subjects = subjects_of(args.recipe, args.set)
    holdout = args.holdout or subjects[-1:]
    unknown = [h for h in holdout if h not in subjects]
    if unknown:
        raise SystemExit(f"--holdout {unknown} are not subjects of {args.recipe} ({subjects})")
    rest = [s for s in subjects if s not in holdout]
    scratch_seeds = args.seeds if args.scratch_seeds is None else args.scratch_seeds
    out = Path(args.out) / Path(args.recipe).stem
    ds = _dataset_id(args.recipe)
    tag = f"{args.tag}-" if args.tag else ""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"# {' '.join(sys.argv)}\n# held out: {holdout}; pre-trained on {len(rest)} subjects", flush=True)

    def pool_map(fn, items):
        with ThreadPoolExecutor(args.jobs) as pool:
            return list(pool.map(fn, items))

    jobs = [("pretrain", s, None, None, ["train", args.recipe, f"seed={s}", *args.set,
                                         f"datasets.0.subjects=[{','.join(rest)}]"]) for s in args.seeds]
    jobs += [("joint", s, None, None, ["train", args.recipe, f"seed={s}", *args.set]) for s in args.seeds]
    names = {"pretrain": lambda s, f, h: f"{tag}pretrain-seed{s}", "joint": lambda s, f, h: f"{tag}joint-seed{s}",
             "finetune": lambda s, f, h: f"{tag}finetune-{f:g}-seed{s}",
             "zeroshot": lambda s, f, h: f"{tag}zeroshot-{f:g}-seed{s}",
             "scratch": lambda s, f, h: f"scratch-{h}-{f:g}-seed{s}"}
    results: dict[tuple, tuple[dict, float]] = {}

    def run(job):
        kind, s, f, h, cmd = job
        return run_foundation(cmd, out / names[kind](s, f, h), threads,
                              options=("--zero-shot",) if kind == "zeroshot" else ())

    for job, res in zip(jobs, pool_map(run, jobs)):
        results[job[:4]] = res
        print(f"done {job[0]} seed {job[1]} ({res[1]:.0f} s)", flush=True)

    stage2 = []
    for f in args.fractions:
        for s in args.seeds:
            cmd = ["finetune", str(out / names["pretrain"](s, f, None)), args.recipe, f"seed={s}", *args.set,
                   f"datasets.0.subjects=[{','.join(holdout)}]", f"datasets.0.train_fraction={f}",
                   f"train.steps={args.finetune_steps}", f"train.lr={args.finetune_lr}", "train.eval_every=50",
                   "train.checkpoint_every=100", "train.warmup_steps=10"]
            stage2.append(("finetune", s, f, None, cmd))
            # no step: the mean token (and, with an alignment, the map fitted on the same samples)
            stage2.append(("zeroshot", s, f, None, cmd))
    # at 100 % the single-subject models are issue 13's SS rows, not onboarding
    scratch_fractions = [f for f in (args.fractions if args.scratch_fractions is None else args.scratch_fractions)
                         if f < 1.0]
    for f in scratch_fractions:  # after every fine-tuning run: the cheap rows first
        for s in scratch_seeds:
            for h in holdout:
                stage2.append(("scratch", s, f, h, ["train", args.recipe, f"seed={s}", f"datasets.0.subjects=[{h}]",
                                                    f"datasets.0.train_fraction={f}", *SCRATCH]))
    for job, res in zip(stage2, pool_map(run, stage2)):
        results[job[:4]] = res
        print(f"done {job[0]} {job[2]:g} seed {job[1]}{' ' + job[3] if job[3] else ''} ({res[1]:.0f} s)", flush=True)
    linear = {f: run_foundation([args.recipe, f"datasets.0.subjects=[{','.join(holdout)}]",
                                 f"datasets.0.train_fraction={f}"], out / f"linear-{f:g}", threads,
                                module="foundation.workflows.linear", options=("--solver", "ridge"))[0]
              for f in args.fractions}

    def test_map(metrics: dict, h: str) -> float:
        return metrics["test"]["per_subject"][f"{ds}/{h}"]["mAP"]

    joint = {(h, s): test_map(results[("joint", s, None, None)][0], h) for h in holdout for s in args.seeds}
    from foundation.objectives.stats import holm, paired_ttest

    pvals, summary_rows = [], []
    for f in args.fractions:
        ft = {(h, s): test_map(results[("finetune", s, f, None)][0], h) for h in holdout for s in args.seeds}
        zs = {(h, s): test_map(results[("zeroshot", s, f, None)][0], h) for h in holdout for s in args.seeds}
        lin = {(h, s): test_map(linear[f], h) for h in holdout for s in args.seeds}
        sc = ({(h, s): test_map(results[("scratch", s, f, h)][0], h) for h in holdout for s in scratch_seeds}
              if f in scratch_fractions else {})
        ratio = [ft[k] / joint[k] for k in ft]
        row = {"fraction": f, "finetune": ft, "zero_shot": zs, "linear": lin, "scratch": sc,
               "finetune_over_joint": ratio}
        for name, other in (("scratch", sc), ("linear", lin)):
            pairs = [k for k in other if k in ft]
            if len(pairs) >= 2:
                diff = statistics.fmean(ft[k] - other[k] for k in pairs)
                _, pv = paired_ttest([ft[k] for k in pairs], [other[k] for k in pairs])
                row[f"vs_{name}"] = {"diff": diff, "p": pv, "n": len(pairs)}
                pvals.append((f, name, pv))
        n_train = _train_count(results[("finetune", args.seeds[0], f, None)][0], f"{ds}/{holdout[0]}")
        ft_s = statistics.fmean(results[("finetune", s, f, None)][0].get("train_seconds") or math.nan
                                for s in args.seeds)
        row.update(train_seconds_finetune=ft_s, samples=n_train)
        summary_rows.append(row)
    adjusted = dict(zip([(f, n) for f, n, _ in pvals], holm([p for _, _, p in pvals])))

    def cell(values: dict) -> str:
        v = list(values.values())
        if not v:
            return "–"
        return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    def vs(row, name) -> str:
        c = row.get(f"vs_{name}")
        if c is None:
            return "–"
        pa = adjusted[(row["fraction"], name)]
        stars = "***" if pa < 0.001 else "**" if pa < 0.01 else "*" if pa < 0.05 else "n.s."
        return f"{c['diff']:+.3f} {stars} (p_holm = {pa:.2g}, n = {c['n']})"

    lines = ["| new subject's training data | fine-tune tokens | finetune / joint | zero-shot (mean token, no step) | "
             "single-subject scratch | linear (ridge) | fine-tune − scratch | fine-tune − linear | fine-tune s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary_rows:
        r = row["finetune_over_joint"]
        lines.append(f"| {row['fraction']:.0%} | {cell(row['finetune'])} | {statistics.fmean(r):.0%} "
                     f"(min {min(r):.0%}) | {cell(row['zero_shot'])} "
                     f"| {cell(row['scratch'])} | {cell(row['linear'])} | {vs(row, 'scratch')} | "
                     f"{vs(row, 'linear')} | {row['train_seconds_finetune']:.0f} |")
    pre_s = [results[("pretrain", s, None, None)][0].get("train_seconds") for s in args.seeds]
    from foundation.objectives.scoring import pooled

    chance = pooled(results[("joint", args.seeds[0], None, None)][0]["test"]["per_dataset"][ds], "chance_mAP")
    lines.append(f"\njoint (the subjects seen all along, 100 % of their data): {cell(joint)}; chance test mAP "
                 f"{chance:.3f}; pre-training ({len(rest)} subjects) train seconds {[round(x) for x in pre_s]}; "
                 f"values: mean ± std over {len(holdout)} held-out subjects × seeds {args.seeds} "
                 f"(scratch: seeds {scratch_seeds} at {scratch_fractions})")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}efficiency.md").write_text(f"`{' '.join(sys.argv)}`\n\n{text}\n")
    keyed = [{k: ({f"{h}/seed{s}": v for (h, s), v in val.items()} if isinstance(val, dict) and k in
                  ("finetune", "zero_shot", "linear", "scratch") else val) for k, val in row.items()}
             for row in summary_rows]
    (out / f"{tag}summary.json").write_text(json.dumps(
        {"held_out": holdout, "seeds": args.seeds, "scratch_seeds": scratch_seeds, "rows": keyed,
         "scratch_fractions": scratch_fractions,
         "joint": {f"{h}/seed{s}": v for (h, s), v in joint.items()}, "chance_mAP": chance,
         "pretrain_train_seconds": pre_s}, indent=2))
    plot(summary_rows, list(joint.values()), chance, out / f"{tag}efficiency.png",
         title=f"new subjects {', '.join(holdout)} ({ds})")
    print(f"table: {out / (tag + 'efficiency.md')}\nplot: {out / (tag + 'efficiency.png')}")


def _train_count(metrics: dict, gid: str) -> int | None:
    return (metrics.get("train_samples") or {}).get(gid)


def _dataset_id(recipe: str) -> str:
    from foundation.core.recipe import load_recipe

    return load_recipe(recipe).datasets[0].id


def plot(rows: list[dict], joint: list[float], chance: float | None, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    for label, key, style in (("fine-tune tokens (backbone frozen)", "finetune", "o-"),
                              ("zero-shot (mean token, no step)", "zero_shot", "d-."),
                              ("single-subject from scratch", "scratch", "s--"),
                              ("linear read-out (ridge, per subject)", "linear", "^:")):
        pts = [(100 * r["fraction"], list(r[key].values())) for r in rows if r.get(key)]
        if not pts:
            continue
        ax.errorbar([x for x, _ in pts], [statistics.fmean(v) for _, v in pts],
                    yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts],
                    fmt=style, capsize=3, label=label)
    ax.axhline(statistics.fmean(joint), color="k", lw=1, label="joint model, subjects seen all along")
    ax.axhline(0.9 * statistics.fmean(joint), color="k", lw=0.8, ls="--", label="90 % of joint")
    if chance:
        ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    xs = [100 * r["fraction"] for r in rows]
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}%" for x in xs])
    ax.set_xlabel("training data of the new subject")
    ax.set_ylabel("test mAP")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
