"""Every performance benchmark, one command: tables on stdout, one JSON + one markdown report.

    .venv/bin/python benchmarks/run_all.py                       # ~15-25 minutes on 2 loaded CPU cores
    .venv/bin/python benchmarks/run_all.py --only step data_path --out-dir runs/perf
    .venv/bin/python benchmarks/run_all.py --full                # the benchmarks' own (longer) defaults

Runs, each in its own process (so one failing does not stop the others):

1. ``bench_step.py``            step efficiency of the NSD- and HCP-shaped models vs. the GEMM peak;
2. ``bench_data_path.py``       shard loader samples/s vs. what the model consumes (reads 1's JSON);
3. ``bench_subject_scaling.py`` step time and memory at 9, 100, 1000 subjects;
4. ``bench_nsd_shard.py``, ``bench_hcp_shard.py``  shard building vs. raw nibabel reads.

Without ``--full`` the slow ones run shorter than their defaults (fewer steps/trials/volumes; the
settings are in the report).  Writes ``OUT_DIR/report.md`` (machine, command, every table as printed)
and ``OUT_DIR/all.json`` (the machine, each benchmark's command, exit status, wall time, printed
output and, where it writes one, its JSON).  Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf

REPO = _perf.REPO
NAMES = ("step", "data_path", "subject_scaling", "nsd_shard", "hcp_shard")


def plan(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str], Path | None]]:
    py = sys.executable
    common = ["--threads", str(args.threads)]
    step_json, dp_json, sc_json = out / "step.json", out / "data_path.json", out / "subject_scaling.json"
    step = [py, "benchmarks/bench_step.py", "--shape", "both", "--device", args.device, *common, "--out", str(step_json)]
    data = [py, "benchmarks/bench_data_path.py", "--device", args.device, *common, "--step-json", str(step_json),
            "--out", str(dp_json)]
    scaling = [py, "benchmarks/bench_subject_scaling.py", "--out", str(sc_json)]
    nsd = [py, "benchmarks/bench_nsd_shard.py"]
    hcp = [py, "benchmarks/bench_hcp_shard.py"]
    if not args.full:
        step += ["--steps", "3"]
        data += ["--samples", "512"]
        scaling += ["--steps", "50", "--warmup", "10", "--repeats", "1", "--paired-steps", "40"]
        nsd += ["--trials", "300"]
        hcp += ["--seconds", "30"]
    runs = [("step", step, step_json), ("data_path", data, dp_json), ("subject_scaling", scaling, sc_json),
            ("nsd_shard", nsd, None), ("hcp_shard", hcp, None)]
    return [r for r in runs if r[0] in args.only]


def run_one(name: str, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    rc = proc.wait()
    return {"command": cmd, "exit": rc, "wall_s": time.perf_counter() - t0, "loadavg_start": list(load0),
            "loadavg_end": list(os.getloadavg()), "output": "".join(lines)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="runs/perf", help="where report.md, all.json and each JSON go")
    p.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    p.add_argument("--full", action="store_true", help="each benchmark with its own default (longer) settings")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--omp-wait-policy", choices=["inherit", "PASSIVE", "ACTIVE"], default="inherit",
                   help="OMP_WAIT_POLICY of the benchmark processes (PASSIVE: much faster on an oversubscribed "
                        "machine, see docs/PERFORMANCE.md); default: this shell's")
    args = p.parse_args(argv)
    os.chdir(REPO)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    torch.set_num_threads(args.threads)
    info = _perf.machine(args.device)
    info["omp_wait_policy"] = env.get("OMP_WAIT_POLICY", "(unset)")
    command = _perf.rerun("benchmarks/run_all.py", sys.argv[1:] if argv is None else argv)
    print(f"rerun: {command}\n{_perf.machine_line(info)}, OMP_WAIT_POLICY={info['omp_wait_policy']}", flush=True)
    results: dict[str, Any] = {}
    for name, cmd, json_path in plan(args, out):
        r = run_one(name, cmd, env)
        if json_path is not None and json_path.is_file():
            r["json"] = json.loads(json_path.read_text())
        results[name] = r
    doc = {"command": command, "machine": info, "results": results}
    (out / "all.json").write_text(json.dumps(doc, indent=1))
    machine_md = f"Machine: {_perf.machine_line(info)}, OMP_WAIT_POLICY={info['omp_wait_policy']}\n"
    md = ["# Performance benchmarks\n", f"Command: `{command}`\n", machine_md]
    for name, r in results.items():
        la0, la1 = r["loadavg_start"][0], r["loadavg_end"][0]
        md.append(f"\n## {name}\n\n`{' '.join(r['command'])}` — exit {r['exit']}, {r['wall_s']:.0f} s, "
                  f"load average {la0:.1f} → {la1:.1f}\n\n```\n{r['output'].rstrip()}\n```\n")
    (out / "report.md").write_text("\n".join(md))
    print(f"\nwrote {out / 'report.md'} and {out / 'all.json'}")
    failed = [n for n, r in results.items() if r["exit"] != 0]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
