"""Benchmark (not a test): does averaging the weights of the last few checkpoints beat the selected one? (RESULTS §4p)

Why asked: on the volume world the 90-second validation block orders methods unlike the test block, so the step a
run keeps is chosen on noise about as large as the differences between methods (§4o), and the networks' seed spread
is 0.01-0.04 test mAP.  Averaging the weights along the end of a trajectory (stochastic weight averaging, Izmailov
et al. 2018) is the usual cure for both.

What it does, on finished runs trained with ``train.keep_checkpoints`` covering every evaluation (nothing is
trained): at each evaluation step ``s`` of a run's validation history, the floating-point weights of its
checkpoints at ``s`` and the ``--window - 1`` evaluation steps before it are averaged (fewer at the start; integer
buffers are taken from step ``s``), the averaged model is scored on validation, and the ``s`` with the best
subject-mean validation mAP is kept — the trainer's own rule, applied to the averaged models.  Its test metrics are
compared with the run's ``metrics.json`` (the selected checkpoint), per subject, paired over run x subject. ::

    .venv/bin/python benchmarks/checkpoint_average.py \\
        /tmp/bench/synthetic_volume/aligned-lin-clip-mused-seed* --window 4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def averaged(run: Path, steps: list[int]) -> dict[str, Any]:
    """The mean of the floating-point tensors of ``run``'s checkpoints at ``steps`` (the last one's others)."""
    from safetensors.torch import load_file

    states = []
    for step in steps:
        path = run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"
        if not path.is_file():
            raise SystemExit(f"{path} not found: train {run} with train.keep_checkpoints covering every evaluation")
        states.append(load_file(str(path)))
    out = dict(states[-1])
    for key, value in out.items():
        if value.is_floating_point():
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(value.dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    from _runs import paired_summary, subject_maps

    from foundation.core.recipe import load_recipe
    from foundation.engine.checkpoint import latest_checkpoint, read_state
    from foundation.engine.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    p.add_argument("--window", type=int, default=4, help="checkpoints averaged at each evaluation step")
    p.add_argument("--curve", action="store_true",
                   help="also score test at every step: how validation and test agree along the run, and the best "
                        "test over steps (an upper bound no selection rule reaches: it looks at test)")
    a = p.parse_args(argv)
    pairs: list[tuple[float, float]] = []
    curves: list[str] = []
    print("| run | selected step | its test mAP | averaged: end step | its test mAP |\n|---|---|---|---|---|")
    for run in a.runs:
        metrics = json.loads((run / "metrics.json").read_text())
        history = read_state(latest_checkpoint(run))["history"]
        steps = [h["step"] for h in history if h["step"] > 0]
        trainer = Trainer(load_recipe(run / "config.yaml", [f"run.dir={run}"]), progress=False)
        try:
            best: tuple[float, int] | None = None
            vals, tests = [], []
            for i, step in enumerate(steps):
                trainer.core.load_state_dict(averaged(run, steps[max(0, i - a.window + 1):i + 1]))
                score = float(trainer.evaluate("val")["mAP"])
                if best is None or (math.isfinite(score) and score > best[0]):
                    best = (score, step)
                if a.curve:
                    vals.append(score)
                    tests.append(trainer.evaluate("test"))
            end = best[1]
            i = steps.index(end)
            if a.curve:
                from scipy import stats

                maps = [float(t["mAP"]) for t in tests]
                top = max(range(len(steps)), key=lambda j: maps[j])
                curves.append(f"{run.name}: validation vs test over {len(steps)} steps, Spearman "
                              f"{stats.spearmanr(vals, maps).statistic:+.2f}; best test {maps[top]:.4f} at step "
                              f"{steps[top]}, test at the best validation step {maps[i]:.4f}")
                test = tests[i]  # scored above
            else:
                trainer.core.load_state_dict(averaged(run, steps[max(0, i - a.window + 1):i + 1]))
                test = trainer.evaluate("test")
        finally:
            trainer.close()
        ours, theirs = subject_maps(test), subject_maps(metrics["test"])
        pairs += [(ours[s], theirs[s]) for s in ours if math.isfinite(ours[s] + theirs[s])]
        print(f"| {run.name} | {metrics['best_step']} | {metrics['test']['mAP']:.4f} | {end} | {test['mAP']:.4f} |",
              flush=True)
    print(f"\naveraged ({a.window} checkpoints) vs selected: {paired_summary(pairs, 'run x subject')}")
    if curves:
        print("\n" + "\n".join(curves))
    print(f"rerun: {Path(sys.executable).name} {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
