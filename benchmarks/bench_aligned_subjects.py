"""Benchmark (not a test): the aligned volume path with many subjects, end to end.

    python benchmarks/bench_aligned_subjects.py --subjects 20 200 --out runs/aligned-subjects

For each subject count, a synthetic volume world (``recipes/synthetic_volume.yaml``'s plugin: a 12×14×12 grid,
``--seconds`` of movie per subject) is sharded, then ``foundation train`` runs ``--steps`` steps of CLIP-MUSED with
``model.alignment=guidance-ridge-joint`` (the joint pool bounded by ``model.alignment_pool_samples`` /
``alignment_pool_gib``; the other subjects fitted one at a time against the pool's shared map) and a linear head,
in a fresh process. Printed per count: shard seconds, training-command seconds (alignment fit included), its peak
RSS (the child's own ``ru_maxrss``), the subjects fitted jointly and against the shared map (``alignment/fit.json``),
the saved model's size and the test mAP of the run (a few steps: informational). Add recipe overrides after ``--``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], log: Path) -> tuple[float, int]:
    """Seconds and the peak RSS (KiB, this child's own: ``os.wait4``) of ``cmd`` run as a child process, its output
    in ``log`` (fails loudly)."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t, usage.ru_maxrss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[20, 200])
    p.add_argument("--seconds", type=int, default=160, help="movie seconds per subject")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default="runs/aligned-subjects")
    p.add_argument("overrides", nargs="*", help="recipe overrides (after --)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    py = sys.executable
    print(f"rerun: python benchmarks/bench_aligned_subjects.py --subjects {' '.join(map(str, args.subjects))} "
          f"--seconds {args.seconds} --steps {args.steps} --out {args.out}"
          + (f" -- {' '.join(args.overrides)}" if args.overrides else ""))
    print("| subjects | shard s | train command s | peak RSS MiB | joint / against the shared map | model MB | test mAP |")
    print("|---|---|---|---|---|---|---|")
    out.mkdir(parents=True, exist_ok=True)
    for n in args.subjects:
        common = ["recipes/synthetic_volume.yaml", f"datasets.0.options.n_subjects={n}",
                  f"datasets.0.options.seconds={args.seconds}", f"shards.root={out / 'shards'}"]
        shard_s, _ = _run([py, "-m", "foundation", "shard", *common, "--no-progress"], out / f"shard-{n}.log")
        run_dir = out / f"run-{n}"
        train_s, peak = _run([py, "-m", "foundation", "train", *common, "model.alignment=guidance-ridge-joint",
                              "model.head=linear", f"train.steps={args.steps}", f"train.eval_every={args.steps}",
                              f"train.checkpoint_every={args.steps}", f"run.dir={run_dir}", *args.overrides,
                              "--no-progress"], out / f"train-{n}.log")
        fit = json.loads((run_dir / "alignment" / "fit.json").read_text())
        joint = sum(v.get("pool") == "joint" for v in fit.values())
        test = json.loads((run_dir / "metrics.json").read_text())["test"]["mAP"]
        size = (run_dir / "best" / "model.safetensors").stat().st_size / 1e6
        print(f"| {n} | {shard_s:.1f} | {train_s:.1f} | {peak / 1024:.0f} | {joint} / {len(fit) - joint} | {size:.1f} | {test:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
