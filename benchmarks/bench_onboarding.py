"""Onboarding a new subject (``foundation finetune``): time per step and in total vs. full training.

    .venv/bin/python benchmarks/bench_onboarding.py                    # synthetic, hold out sub-10
    .venv/bin/python benchmarks/bench_onboarding.py --steps 100 --rounds 3 --pretrain-steps 300

One subject is held out; a model is pre-trained on the others (``--pretrain-steps``, untimed).  Then,
in ONE process, rounds alternate (the order rotating) between

* **full**: training the whole model on every subject from scratch (``foundation train``'s
  :class:`~foundation.engine.trainer.Trainer`), ``--steps`` steps;
* **finetune**: the held-out subject added to the pre-trained model, only its two tokens trained
  (``foundation finetune``'s Trainer with a :class:`~foundation.engine.surgery.FinetuneSpec`), the
  same number of steps, at the schedule of ``benchmarks/finetune_efficiency.py`` (lr 3e-3);

each timed as set-up (building the Trainer: shards found, model built or loaded and operated on) and
training steps (``fit()`` minus the time spent in validation), with a ``--gemm``² GEMM timed just
before (the normalised columns divide out the machine's drift, as ``bench_step.py`` does).  The totals
are per-step time × the recipe's steps (full, ``train.steps`` of the recipe) or × ``--finetune-total``
(finetune, finetune_efficiency's default 300), plus the set-up.  Sets ``OMP_WAIT_POLICY=PASSIVE`` as
the ``foundation`` command does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf


def timed_run(recipe, *, finetune=None) -> dict:
    from foundation.engine.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(recipe, progress=False, finetune=finetune)
    setup_s = time.perf_counter() - t0
    spent = [0.0]
    evaluate = trainer.evaluate

    def timed_evaluate(*a, **kw):
        t = time.perf_counter()
        try:
            return evaluate(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    trainer.evaluate = timed_evaluate
    try:
        t0 = time.perf_counter()
        trainer.fit()
        fit_s = time.perf_counter() - t0
        trainable = sum(p.numel() for p in trainer.core.parameters() if p.requires_grad)
    finally:
        trainer.close()
    steps = recipe.train.steps
    return {"setup_s": setup_s, "fit_s": fit_s, "eval_s": spent[0], "steps": steps,
            "step_s": (fit_s - spent[0]) / steps, "trainable": trainable, "parameters": trainer.n_params}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/synthetic.yaml")
    p.add_argument("--holdout", default="sub-10")
    p.add_argument("--steps", type=int, default=100, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--finetune-total", type=int, default=300, help="steps of a real onboarding (for the total)")
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--out")
    args = p.parse_args(argv)
    os.chdir(_perf.REPO)
    from foundation.core.openmp import default_wait_policy

    default_wait_policy()
    import torch

    from foundation.core.recipe import load_recipe
    from foundation.data.shards import build_shards
    from foundation.engine.surgery import FinetuneSpec

    cmd = _perf.rerun("benchmarks/bench_onboarding.py", [
        "--recipe", args.recipe, "--holdout", args.holdout, "--steps", str(args.steps), "--rounds",
        str(args.rounds), "--pretrain-steps", str(args.pretrain_steps), "--finetune-total",
        str(args.finetune_total), "--gemm", str(args.gemm)] + (["--out", args.out] if args.out else []))
    print(f"rerun: {cmd}", flush=True)
    print(_perf.machine_line(_perf.machine("cpu")), flush=True)
    base = load_recipe(args.recipe)
    full_steps = base.train.steps
    subjects = list(next(iter(build_shards(base, progress=False).values())).data["subjects"])
    rest = [s for s in subjects if s != args.holdout]
    gemm = _perf.Gemm(args.gemm)
    gemm.time(1)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-onboarding-") as tmp:
        pre = Path(tmp) / "pretrain"
        t0 = time.perf_counter()
        r = timed_run(load_recipe(args.recipe, [f"train.steps={args.pretrain_steps}", f"run.dir={pre}",
                                                f"datasets.0.subjects=[{','.join(rest)}]"]))
        print(f"  pre-trained on {len(rest)} subjects, {args.pretrain_steps} steps: {time.perf_counter() - t0:.0f} s",
              flush=True)
        kinds = ["full", "finetune"]
        for rnd in range(args.rounds):
            for kind in kinds[rnd % 2:] + kinds[: rnd % 2]:
                run_dir = Path(tmp) / f"{kind}-{rnd}"
                g = gemm.time(3)
                if kind == "full":
                    r = timed_run(load_recipe(args.recipe, [f"train.steps={args.steps}", f"run.dir={run_dir}"]))
                else:
                    r = timed_run(load_recipe(args.recipe, [
                        f"train.steps={args.steps}", f"run.dir={run_dir}", f"datasets.0.subjects=[{args.holdout}]",
                        "train.lr=3e-3", "train.warmup_steps=10"]), finetune=FinetuneSpec(source=pre.resolve()))
                r.update(kind=kind, round=rnd, gemm_s=g, loadavg=os.getloadavg()[0])
                runs.append(r)
                print(f"  round {rnd} {kind}: set-up {r['setup_s']:.1f} s, {1e3 * r['step_s']:.1f} ms/step, "
                      f"trainable {r['trainable']} of {r['parameters']}, load {r['loadavg']:.2f}", flush=True)
    ref = statistics.median(r["gemm_s"] for r in runs)
    print(f"\n{args.recipe}: {args.rounds} rounds of {args.steps} steps each, interleaved, "
          f"{torch.get_num_threads()} threads; load average at the end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| run | trainable parameters | set-up s | ms/step, median (IQR) | normalised ms/step (IQR) | "
          "steps of a real run | total s (set-up + steps) | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for kind in kinds:
        rs = [r for r in runs if r["kind"] == kind]
        ms = [1e3 * r["step_s"] for r in rs]
        norm = [1e3 * r["step_s"] * ref / r["gemm_s"] for r in rs]  # slower GEMM (busy machine) -> scale down
        n = full_steps if kind == "full" else args.finetune_total
        setup = statistics.median(r["setup_s"] for r in rs)
        total = setup + n * statistics.median(ms) / 1e3
        summary[kind] = {"ms": statistics.median(ms), "total": total, "steps": n}
        print(f"| {kind} | {rs[0]['trainable']:,} of {rs[0]['parameters']:,} | {setup:.1f} "
              f"| {_perf.med_iqr(ms)} | {_perf.med_iqr(norm)} | {n} | {total:.0f} "
              f"| {statistics.median(r['loadavg'] for r in rs):.2f} |")
    paired = [f["step_s"] / u["step_s"] for f, u in zip([r for r in runs if r["kind"] == "finetune"],
                                                         [r for r in runs if r["kind"] == "full"])]
    print(f"\nfinetune step ÷ full step, same round: {_perf.med_iqr(paired, '{:.2f}')}; "
          f"total onboarding ÷ full training: {summary['finetune']['total'] / summary['full']['total']:.2f}")
    _perf.write_results(args.out, command=cmd, runs=runs, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
