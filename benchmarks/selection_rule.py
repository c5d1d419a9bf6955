"""What the checkpoint-selection rule moves: pooled validation mAP (before issue 15) vs the mean over
subjects of each subject's validation mAP (today), on finished runs.

    python benchmarks/selection_rule.py /tmp/bench/synthetic/clip-mused-seed*

For every run directory: the step each rule selects (from the validation history in the latest
checkpoint, which records both figures), and the test figures at that step, computed from the
run's checkpoint of that step, or ``best/`` for the step the run selected (train with ``train.keep_checkpoints`` at least the number of
evaluations so every step's weights are kept).  Prints one row per run and the mean ± std over runs
of the test subject-mean and pooled mAP under each rule.  Nothing is trained.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.4f} ± {sd:.4f}"


def metrics_at(run_dir: Path, step: int, cache: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of ``run_dir``'s checkpoint at ``step``."""
    from safetensors.torch import load_file

    from foundation.core.recipe import load_recipe
    from foundation.engine.trainer import Trainer

    import json

    path = run_dir / "checkpoints" / f"step-{step:08d}" / "model.safetensors"
    if not path.is_file() and json.loads((run_dir / "metrics.json").read_text()).get("best_step") == step:
        path = run_dir / "best" / "model.safetensors"  # the selected step's weights
    if not path.is_file():
        raise SystemExit(f"{path} not found: retrain {run_dir} with train.keep_checkpoints covering every evaluation")
    if "trainer" not in cache:
        cache["trainer"] = Trainer(load_recipe(run_dir / "config.yaml", [f"run.dir={run_dir}"]), progress=False)
    trainer = cache["trainer"]
    trainer.core.load_state_dict(load_file(str(path)))
    return trainer.evaluate("test")


def main(argv: list[str] | None = None) -> int:
    from foundation.engine.checkpoint import latest_checkpoint, read_state

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    args = p.parse_args(argv)
    rows = {"pooled": {"subject": [], "pooled": []}, "subject": {"subject": [], "pooled": []}}
    print("| run | step (pooled rule) | step (subject-mean rule) | test mAP, subject mean: pooled rule → "
          "today | test mAP, pooled: pooled rule → today |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        history = read_state(latest_checkpoint(run))["history"]
        if not history or "val_pooled_mAP" not in history[0]:
            print(f"{run}: no pooled validation history (trained before issue 15); skipped", file=sys.stderr)
            continue
        steps = {"pooled": max(history, key=lambda h: h["val_pooled_mAP"])["step"],
                 "subject": max(history, key=lambda h: h["val_mAP"])["step"]}
        cache: dict[str, Any] = {}
        tests = {rule: metrics_at(run, step, cache) for rule, step in steps.items()}
        for rule, m in tests.items():
            rows[rule]["subject"].append(m["mAP"])
            rows[rule]["pooled"].append(m["pooled"]["mAP"])
        print(f"| {run.name} | {steps['pooled']} | {steps['subject']} | {tests['pooled']['mAP']:.4f} → "
              f"{tests['subject']['mAP']:.4f} | {tests['pooled']['pooled']['mAP']:.4f} → "
              f"{tests['subject']['pooled']['mAP']:.4f} |", flush=True)
    print()
    for rule, label in (("pooled", "selected on pooled val mAP (before)"),
                        ("subject", "selected on subject-mean val mAP (today)")):
        print(f"{label}: test mAP subject mean {_fmt(rows[rule]['subject'])}, pooled {_fmt(rows[rule]['pooled'])} "
              f"(mean ± std over {len(rows[rule]['subject'])} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
