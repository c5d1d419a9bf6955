"""Data efficiency of a new subject: tokens-only fine-tuning vs. training from scratch.

    python benchmarks/finetune_efficiency.py recipes/synthetic.yaml --holdout sub-10 --seeds 0 --jobs 2

One subject is held out of pre-training (the recipe's first dataset minus ``--holdout``).  Then,
for each fraction of the held-out subject's training data (``--fractions``, default 1 5 10 25 100 %):

* **finetune**: ``foundation finetune`` adds the subject's two tokens to the pre-trained model and
  trains only them (backbone frozen);
* **scratch**: a single-subject model trained from scratch on the same samples (the ``ss`` baseline
  of `foundation bench`, method ss-vit: the same network with shared tokens, BCE only);

and, as the ceiling, **joint**: the model pre-trained with the subject all along (100 % of its data).
Reports the held-out subject's test mAP / AUC (mean ± std over seeds), the wall time of each kind of
run, writes ``summary.json`` + ``efficiency.md`` and a plot ``efficiency.png`` into ``--out``.
Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _runs import fmt, run_foundation

SCRATCH = ["model.tokens=shared", "loss.lambda_orth=0", "loss.lambda_low=0", "loss.lambda_high=0"]


def subjects_of(recipe: str, overrides: list[str]) -> list[str]:
    from foundation.data.shards import build_shards
    from foundation.core.recipe import load_recipe

    index = next(iter(build_shards(load_recipe(recipe, overrides), progress=False).values()))
    return list(index.data["subjects"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--holdout", default=None, help="subject held out of pre-training (default: the last)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.25, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--finetune-lr", type=float, default=3e-3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/finetune_efficiency")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for every run (e.g. train.steps=200)")
    args = p.parse_args()

    subjects = subjects_of(args.recipe, args.set)
    holdout = args.holdout or subjects[-1]
    if holdout not in subjects:
        raise SystemExit(f"--holdout {holdout!r} is not a subject of {args.recipe} ({subjects})")
    rest = [s for s in subjects if s != holdout]
    out = Path(args.out) / Path(args.recipe).stem
    key = f"{_dataset_id(args.recipe)}/{holdout}"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"# {' '.join(sys.argv)}\n# held out: {key}; pre-trained on {len(rest)} subjects", flush=True)

    def pool_map(fn, items):
        with ThreadPoolExecutor(args.jobs) as pool:
            return list(pool.map(fn, items))

    # stage 1: pre-training without the subject, and the joint model with it
    stage1 = [("pretrain", s, ["train", args.recipe, f"seed={s}", *args.set,
                                     f"datasets.0.subjects=[{','.join(rest)}]"])
              for s in args.seeds]
    stage1 += [("joint", s, ["train", args.recipe, f"seed={s}", *args.set]) for s in args.seeds]
    results: dict[tuple, tuple[dict, float]] = {}
    stage1_results = pool_map(lambda j: run_foundation(j[2], out / f"{j[0]}-seed{j[1]}", threads), stage1)
    for (kind, s, _), res in zip(stage1, stage1_results):
        results[(kind, s, 1.0)] = res
        print(f"done {kind} seed {s} ({res[1]:.0f} s)", flush=True)

    # stage 2: fine-tuning and scratch models per fraction
    stage2 = []
    for s in args.seeds:
        for f in args.fractions:
            common = [f"seed={s}", *args.set, f"datasets.0.subjects=[{holdout}]", f"datasets.0.train_fraction={f}"]
            stage2.append(("finetune", s, f, ["finetune", str(out / f"pretrain-seed{s}"), args.recipe, *common,
                                              f"train.steps={args.finetune_steps}", f"train.lr={args.finetune_lr}",
                                              "train.eval_every=50", "train.checkpoint_every=100",
                                              "train.warmup_steps=10"]))
            stage2.append(("scratch", s, f, ["train", args.recipe, *common, *SCRATCH]))
    for (kind, s, f, _), res in zip(stage2, pool_map(
            lambda j: run_foundation(j[3], out / f"{j[0]}-{j[2]:g}-seed{j[1]}", threads), stage2)):
        results[(kind, s, f)] = res
        print(f"done {kind} {f:g} seed {s} ({res[1]:.0f} s)", flush=True)

    def subject_metric(kind, s, f, metric):
        return results[(kind, s, f)][0]["test"]["per_subject"][key][metric]

    rows, summary = [], {"held_out": key, "seeds": args.seeds, "fractions": args.fractions, "rows": []}
    lines = ["| train data of the new subject | fine-tune tokens: test mAP | from scratch (SS): test mAP | "
             "joint (saw it all along) | fine-tune s | scratch s |", "|---|---|---|---|---|---|"]
    joint = [subject_metric("joint", s, 1.0, "mAP") for s in args.seeds]
    for f in args.fractions:
        ft = [subject_metric("finetune", s, f, "mAP") for s in args.seeds]
        sc = [subject_metric("scratch", s, f, "mAP") for s in args.seeds]
        ft_s = [results[("finetune", s, f)][0].get("train_seconds") or float("nan") for s in args.seeds]
        sc_s = [results[("scratch", s, f)][0].get("train_seconds") or float("nan") for s in args.seeds]
        lines.append(f"| {f:.0%} | {fmt(ft)} | {fmt(sc)} | {fmt(joint)} | {statistics.fmean(ft_s):.0f} | "
                     f"{statistics.fmean(sc_s):.0f} |")
        rows.append((f, ft, sc))
        summary["rows"].append({"fraction": f, "finetune_mAP": ft, "scratch_mAP": sc, "joint_mAP": joint,
                                "finetune_train_seconds": ft_s, "scratch_train_seconds": sc_s})
    pre_s = [results[("pretrain", s, 1.0)][0].get("train_seconds") for s in args.seeds]
    chance = results[("joint", args.seeds[0], 1.0)][0]["test"]["per_dataset"][key.split("/")[0]]["chance_mAP"]
    lines.append(f"\npre-training ({len(rest)} subjects) train seconds: {[round(x) for x in pre_s]}; "
                 f"chance test mAP: {chance:.3f}")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "efficiency.md").write_text(f"`{' '.join(sys.argv)}`\n\n{text}\n")
    (out / "summary.json").write_text(json.dumps({**summary, "pretrain_train_seconds": pre_s}, indent=2))
    plot(rows, joint, chance, out / "efficiency.png", title=f"new subject {key}")
    print(f"table: {out / 'efficiency.md'}\nplot: {out / 'efficiency.png'}")


def _dataset_id(recipe: str) -> str:
    from foundation.core.recipe import load_recipe

    return load_recipe(recipe).datasets[0].id


def plot(rows, joint: list[float], chance: float | None, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    xs = [100 * f for f, _, _ in rows]
    curves = (("fine-tune tokens (backbone frozen)", 1, "o-"), ("single-subject from scratch", 2, "s--"))
    for label, idx, style in curves:
        means = [statistics.fmean(r[idx]) for r in rows]
        errs = [statistics.stdev(r[idx]) if len(r[idx]) > 1 else 0.0 for r in rows]
        ax.errorbar(xs, means, yerr=errs, fmt=style, capsize=3, label=label)
    ax.axhline(statistics.fmean(joint), color="k", lw=1, label="joint model, subject seen all along")
    if chance:
        ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}%" for x in xs])
    ax.set_xlabel("training data of the new subject")
    ax.set_ylabel("test mAP")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
