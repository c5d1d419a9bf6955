"""Start-up: wall time of a fresh Python importing what ``foundation train`` / ``evaluate`` import.

    .venv/bin/python benchmarks/bench_startup.py                          # this checkout, 5 rounds
    .venv/bin/python benchmarks/bench_startup.py --against /path/to/other/checkout --rounds 7

Every ``foundation`` command, every run of ``foundation bench`` (one subprocess each) and every test
that runs the CLI pays this before its first step.  Each round starts one fresh interpreter per
checkout (the order alternating), running ``import foundation.engine.trainer,
foundation.objectives.metrics`` with the checkout as its working directory, so ``--against`` compares
two versions of the code under the same machine load (before/after in one command). Prints the
median and IQR per checkout, the load average, and the command to rerun.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ("import foundation.engine.trainer, foundation.objectives.metrics as m, pathlib, sys; "
        "sys.exit(0 if pathlib.Path(m.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()) else 3)")


def time_import(checkout: Path) -> float:
    """Seconds for a fresh interpreter (started in ``checkout``) to import the training path."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=checkout, capture_output=True, text=True, check=False)
    if proc.returncode == 3:
        raise SystemExit(f"{checkout}: the interpreter imported foundation from elsewhere, not from this checkout")
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: import failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", type=Path, help="another checkout of foundation to time beside this one")
    p.add_argument("--rounds", type=int, default=5, help="fresh interpreters per checkout (default 5)")
    args = p.parse_args(argv)
    checkouts = [REPO] + ([args.against.resolve()] if args.against else [])
    times: dict[Path, list[float]] = {c: [] for c in checkouts}
    for c in checkouts:
        time_import(c)  # warm the file cache and write .pyc files: not timed
    loads = []
    for r in range(args.rounds):
        for c in (checkouts if r % 2 == 0 else checkouts[::-1]):
            times[c].append(time_import(c))
        loads.append(os.getloadavg()[0])
    print("| checkout | import of the training path, s: median (IQR) | rounds | load avg |")
    print("|---|---|---|---|")
    for c, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        print(f"| {c} | {statistics.median(ts):.2f} ({q[0]:.2f}–{q[2]:.2f}) | {len(ts)} | "
              f"{statistics.fmean(loads):.2f} |")
    print(f"\nrerun: .venv/bin/python benchmarks/bench_startup.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
