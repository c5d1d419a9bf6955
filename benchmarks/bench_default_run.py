"""The embedded default run (``recipes/synthetic.yaml``) under thread / batch-loader settings.

    .venv/bin/python benchmarks/bench_default_run.py                       # 200 steps, 3 rounds, 4 settings
    .venv/bin/python benchmarks/bench_default_run.py --steps 200 --rounds 3 --threads 1 2 --loader main background
    .venv/bin/python benchmarks/bench_default_run.py --threads 2 --loader background \
        --variants "before:train.shard_cache_mib=0,Batch.inline_bytes=0" "after:"

Everything runs in ONE process, the settings interleaved round by round (A B C D, A B C D, …), so load
from other jobs hits every setting alike.  Per run: a fresh :class:`foundation.engine.trainer.Trainer`
on the recipe with ``train.steps`` = ``--steps`` (``torch.set_num_threads`` first; ``--loader main``:
the batches are made in the main process, ``train.background_loader=false``; ``background``: in one
background process, the default), the wall time of ``fit()`` (training steps plus the one validation at the last step),
steps/s, the CPU seconds of this process and of its reaped children (DataLoader workers) per wall
second ("cores busy"), and a ``--gemm``² fp32 GEMM timed with every core just before the run: the
"normalised" steps/s is steps/s × (this run's GEMM time ÷ the median GEMM time), which removes most of
the minute-to-minute drift a shared machine adds.  It prints medians with IQR over rounds, the load
average, and whether the runs of one thread count ended with bit-identical weights and validation
metrics (the loader's process must not change the batches).  ``--variants LABEL:OVERRIDE,…`` adds a third axis
of recipe overrides (and ``Batch.inline_bytes=N``, the loader's in-pickle transfer bound, set on the class before
the run: the loader process is forked from this one), interleaved like the others.  Like the ``foundation``
command, it sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (unless the environment chose a policy).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf

REPO = _perf.REPO


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def one_run(recipe_path: str, overrides: list[str], *, steps: int, threads: int, loader: str,
            run_dir: Path) -> dict:
    import torch

    from foundation.core.recipe import load_recipe
    from foundation.data.loader import Batch
    from foundation.data.tars import TAR_CACHE
    from foundation.engine.trainer import Trainer

    TAR_CACHE.clear()  # every run reads its tars as a fresh `foundation train` process does

    inline = [o for o in overrides if o.startswith("Batch.inline_bytes=")]
    overrides = [o for o in overrides if o not in inline]
    default_inline = Batch.inline_bytes
    Batch.inline_bytes = int(inline[-1].split("=", 1)[1]) if inline else default_inline
    torch.set_num_threads(threads)
    recipe = load_recipe(recipe_path, [*overrides, f"train.steps={steps}",
                                       f"train.background_loader={'true' if loader == 'background' else 'false'}",
                                       f"run.dir={run_dir}"])
    trainer = Trainer(recipe, progress=False)
    try:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        last = trainer.state.history[-1]
        digest = _weights_digest(trainer.core)
    finally:
        trainer.close()
        Batch.inline_bytes = default_inline
    cpu_self = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cpu_children = (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
    return {"threads": threads, "loader": loader, "steps": steps, "wall_s": wall, "steps_per_s": steps / wall,
            "cpu_self_s": cpu_self, "cpu_children_s": cpu_children, "cores_busy": (cpu_self + cpu_children) / wall,
            "val_mAP": last["val_mAP"], "val_AUC": last["val_AUC"], "weights": digest}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/synthetic.yaml")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--loader", nargs="+", choices=["main", "background"], default=["main", "background"])
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra recipe overrides")
    p.add_argument("--variants", nargs="*", default=[], metavar="LABEL:KEY=VALUE,...",
                   help="a third axis: each LABEL's overrides (comma-separated; Batch.inline_bytes=N allowed)")
    p.add_argument("--out", help="write all runs as JSON here")
    args = p.parse_args(argv)
    os.chdir(REPO)
    from foundation.core.openmp import default_wait_policy

    default_wait_policy()  # as the foundation command does, before torch loads
    import torch

    cmd = _perf.rerun("benchmarks/bench_default_run.py",
                      ["--recipe", args.recipe, "--steps", str(args.steps), "--rounds", str(args.rounds),
                       "--threads", *map(str, args.threads), "--loader", *args.loader,
                       "--gemm", str(args.gemm)] + (["--set", *args.set] if args.set else [])
                      + (["--variants", *args.variants] if args.variants else [])
                      + (["--out", args.out] if args.out else []))
    print(f"rerun: {cmd}", flush=True)
    ncpu = os.cpu_count() or 1
    torch.set_num_threads(ncpu)
    print(_perf.machine_line(_perf.machine("cpu")), flush=True)
    gemm = _perf.Gemm(args.gemm)
    gemm.time(1)
    variants = {}
    for spec in args.variants or [":"]:
        label, _, rest = spec.partition(":")
        variants[label or "-"] = [o for o in rest.split(",") if o]
    settings = [(t, w, v) for t in args.threads for w in args.loader for v in variants]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
        # one untimed run first: builds the shards if missing, imports everything, warms the allocator
        one_run(args.recipe, args.set, steps=5, threads=ncpu, loader="main", run_dir=Path(tmp) / "warmup")
        for rnd in range(args.rounds):
            for t, w, v in settings:
                torch.set_num_threads(ncpu)
                g = gemm.time(3)
                r = one_run(args.recipe, [*args.set, *variants[v]], steps=args.steps, threads=t, loader=w,
                            run_dir=Path(tmp) / f"r{rnd}-t{t}-{w}-{v}")
                r.update(round=rnd, gemm_s=g, loadavg=os.getloadavg()[0], variant=v)
                runs.append(r)
                print(f"  round {rnd}: threads {t}, loader {w}, {v}: {r['steps_per_s']:.2f} steps/s, "
                      f"{r['cores_busy']:.2f} cores busy, GEMM {2 * args.gemm**3 / g / 1e9:.0f} GFLOP/s, "
                      f"val mAP {r['val_mAP']:.6f}, weights {r['weights']}, load {r['loadavg']:.2f}", flush=True)
    gemm_ref = statistics.median(r["gemm_s"] for r in runs)
    print(f"\n{args.recipe}, train.steps={args.steps} {' '.join(args.set)}; {args.rounds} rounds interleaved; "
          f"load average at the end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| threads | batches made in | variant | steps/s, median (IQR) | normalised steps/s (IQR) | cores busy | "
          "wall s of fit() | val mAP | weights | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t, w, v in settings:
        rs = [r for r in runs if (r["threads"], r["loader"], r["variant"]) == (t, w, v)]
        norm = [r["steps_per_s"] * r["gemm_s"] / gemm_ref for r in rs]  # a busier machine (slower GEMM) scales up
        print(f"| {t} | {w} | {v} | {_perf.med_iqr([r['steps_per_s'] for r in rs], '{:.2f}')} "
              f"| {_perf.med_iqr(norm, '{:.2f}')} | {statistics.median(r['cores_busy'] for r in rs):.2f} "
              f"| {statistics.median(r['wall_s'] for r in rs):.1f} | {', '.join(sorted({'%.6f' % r['val_mAP'] for r in rs}))} "
              f"| {', '.join(sorted({r['weights'] for r in rs}))} "
              f"| {statistics.median(r['loadavg'] for r in rs):.2f} |")
    for t in args.threads:
        digests = {r["weights"] for r in runs if r["threads"] == t}
        print(f"threads {t}: {'identical' if len(digests) == 1 else 'DIFFERENT'} weights and metrics across "
              f"loaders {args.loader}, variants {list(variants)} and rounds ({len(digests)} distinct)")
    _perf.write_results(args.out, command=cmd, runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
