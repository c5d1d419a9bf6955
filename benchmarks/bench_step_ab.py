"""Interleaved A/B of training-step variants in ONE process (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_step_ab.py --variants base adam=fused adam=foreach --rounds 6
    .venv/bin/python benchmarks/bench_step_ab.py --variants base fast=off --rounds 6
    .venv/bin/python benchmarks/bench_step_ab.py --variants base amp=on --depth 8

Every variant is built from the same seed (same weights, same random batches) by
``bench_step.build`` / ``bench_step.make_step`` (the body of ``Trainer.fit`` for one micro-batch), all
in this process.  Then, round after round, each variant runs one step right after a ``--gemm``² fp32
GEMM timing (the order rotates every round), so load from other jobs hits every variant alike.  Per
variant: median step time (IQR), efficiency = step FLOP/s ÷ the GEMM FLOP/s timed just before it
(median, IQR), and the step time relative to the first variant *in the same round* (median, IQR).

A variant is ``name`` or ``key=value[,key=value]``:

* ``adam=default|foreach|fused|loop`` — the ``torch.optim.Adam`` implementation (``default``: as
  ``foundation.engine.trainer`` builds it, fused where torch has the kernel since round 6; ``loop``:
  torch's per-parameter for-loop, the trainer's optimizer before);
* ``amp=on|off`` — bf16 autocast on CPU;
* ``compile=on`` — ``torch.compile`` of each Transformer block (inductor);
* ``fast=off`` — the encoder's CPU fast paths off (``foundation.model.encoder.CPU_FAST_PATHS``), i.e.
  the plain PyTorch formulation they replace.

Like the ``foundation`` command, it sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (unless the
environment chose a policy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf
import bench_step


def parse_variant(text: str) -> dict[str, str]:
    if text == "base":
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("adam", "amp", "compile", "fast"):
            raise SystemExit(f"variant {text!r}: expected key=value with key adam|amp|compile|fast")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["base", "adam=fused"])
    p.add_argument("--shape", choices=bench_step.SHAPES, default="nsd")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first (compile: >= 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--gemm", type=int, default=4096)
    p.add_argument("--gemm-reps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    os.chdir(bench_step.REPO)
    from foundation.core.openmp import default_wait_policy

    default_wait_policy()
    import torch

    from foundation.model import encoder

    torch.set_num_threads(args.threads)
    cmd = _perf.rerun("benchmarks/bench_step_ab.py", [
        "--variants", *args.variants, "--shape", args.shape, "--rounds", str(args.rounds), "--warmup",
        str(args.warmup), "--threads", str(args.threads), "--gemm", str(args.gemm), "--gemm-reps",
        str(args.gemm_reps), "--seed", str(args.seed)] + (["--batch", str(args.batch)] if args.batch else [])
        + (["--depth", str(args.depth)] if args.depth else []) + (["--out", args.out] if args.out else []))
    print(f"rerun: {cmd}", flush=True)
    print(_perf.machine_line(_perf.machine("cpu")), f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
          flush=True)
    batch = args.batch or bench_step.DEFAULT_BATCH[args.shape]
    base_ns = bench_step.build_parser().parse_args(["--shape", args.shape, "--seed", str(args.seed)])
    base_ns.depth = args.depth
    variants = []
    for text in args.variants:
        v = parse_variant(text)
        ns = argparse.Namespace(**vars(base_ns))
        ns.adam = v.get("adam", "default")
        ns.amp = {"on": True, "off": False}[v["amp"]] if "amp" in v else None
        fast = v.get("fast", "on") != "off"
        encoder.CPU_FAST_PATHS = fast
        setup = bench_step.build(args.shape, batch, "cpu", ns)
        if v.get("compile") == "on":
            for blk in setup.model.encoder.blocks:
                blk.compile()
        step, fwd_bwd, _ = bench_step.make_step(setup, "cpu", ns)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        variants.append({"name": text, "fast": fast, "step": step, "fwd_bwd": fwd_bwd, "setup": setup,
                         "warmup_s": time.perf_counter() - t0, "step_s": [], "gemm_s": [], "load": []})
        print(f"  built {text}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    encoder.CPU_FAST_PATHS = True
    first = variants[0]
    first["setup"].optimizer.zero_grad(set_to_none=True)
    flops, _ = _perf.count_flops(first["fwd_bwd"])
    first["setup"].optimizer.zero_grad(set_to_none=True)
    gemm = _perf.Gemm(args.gemm)
    gemm.time(1)
    paired: dict[str, list[float]] = {v["name"]: [] for v in variants}
    for rnd in range(args.rounds):
        order = variants[rnd % len(variants):] + variants[: rnd % len(variants)]
        this = {}
        for v in order:
            encoder.CPU_FAST_PATHS = v["fast"]
            v["gemm_s"].append(gemm.time(args.gemm_reps))
            t = time.perf_counter()
            v["step"]()
            v["step_s"].append(time.perf_counter() - t)
            v["load"].append(os.getloadavg()[0])
            this[v["name"]] = v["step_s"][-1]
        for v in variants:
            paired[v["name"]].append(this[v["name"]] / this[first["name"]])
        print(f"  round {rnd}: " + ", ".join(f"{k} {1e3 * s:.0f} ms" for k, s in this.items())
              + f", load {os.getloadavg()[0]:.2f}", flush=True)
    encoder.CPU_FAST_PATHS = True
    print(f"\n{args.shape}, batch {batch}, depth {first['setup'].model.cfg.depth}, "
          f"{flops / 1e9:.1f} GFLOP/step, {args.rounds} rounds interleaved, {args.threads} threads; "
          f"load average at the end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| variant | median step ms (IQR) | GEMM GFLOP/s | efficiency, median (IQR) | step time ÷ "
          f"{first['name']} same round (IQR) | warm-up s | load avg |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for v in variants:
        eff = [100 * (flops / s) / (gemm.flops / g) for s, g in zip(v["step_s"], v["gemm_s"])]
        row = {"variant": v["name"], "step_s": v["step_s"], "gemm_s": v["gemm_s"], "efficiency": eff,
               "paired_ratio": paired[v["name"]], "loadavg": v["load"], "warmup_s": v["warmup_s"]}
        rows.append(row)
        print(f"| {v['name']} | {_perf.med_iqr([1e3 * s for s in v['step_s']], '{:.0f}')} "
              f"| {gemm.flops / statistics.median(v['gemm_s']) / 1e9:.1f} | {_perf.med_iqr(eff)} % "
              f"| {_perf.med_iqr(paired[v['name']], '{:.3f}')} | {v['warmup_s']:.1f} "
              f"| {statistics.median(v['load']):.2f} |")
    _perf.write_results(args.out, command=cmd, flops=flops, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
