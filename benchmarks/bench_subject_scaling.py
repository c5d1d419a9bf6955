"""Subject scaling of the real training loop: 9 → 100 → 1000 subjects (not a test).

    python benchmarks/bench_subject_scaling.py                          # ~5-8 minutes on 2 loaded CPU cores
    python benchmarks/bench_subject_scaling.py --subjects 9 1000 --steps 100 --repeats 3 --out runs/scaling.json

Every subject owns exactly ``2 × dim`` parameters, so training cost per step should not depend on how
many subjects there are.  This trains ``recipes/synthetic.yaml`` (the real model: dim 128, depth 4)
with ``datasets.0.options.n_subjects`` set to each count and small per-subject data
(``--stimuli-per-subject`` own stimuli, ``--shared-test`` shared test stimuli), and reports per count:

* shard build: seconds and peak RSS of ``build_shards`` in its own fresh process;
* training, in another fresh process per run: ``foundation.engine.trainer.Trainer.fit`` exactly as
  ``foundation train`` runs it, with ``eval_every``/``log_every`` past the last step and one
  checkpoint at the end, so no evaluation, logging or checkpointing falls inside a timed step.  A thin
  subclass records a timestamp when each training forward starts and wraps ``optimizer.step`` /
  ``scheduler.step``; the step time is the interval between consecutive ``scheduler.step`` calls
  (data loading included), split into data / forward+backward+clip / optimizer.  The first
  ``--warmup`` steps (shuffle-buffer fill, allocator warm-up) are not counted.  ``--repeats`` runs
  per count are interleaved (A B C, C B A, …) and pooled;
* peak RSS (``ru_maxrss``) of the training process when the final validation starts (construction +
  training, no evaluation), and at the very end (largest over the repeats);
* parameters, bytes of the subject token table and of its Adam state, and the validation mAP the
  final evaluation reaches (informational: few steps, few validation samples);
* a *paired* run (``--paired-steps``): one process holds a Trainer per count and interleaves single
  training steps (the body of ``fit``) round-robin, so every count sees the same machine load; the
  per-round ratio to the first count is the load-robust answer to "does a step get slower".

Every configuration uses the same batch size, model, step count, thread count and shuffle buffer
(``--shuffle-buffer``, below the smallest training set because the loader caps the buffer at the
training-set size).  Shards go to a temporary directory removed at the end unless ``--shards-root``
is given (then finished shards are reused, and the table says so instead of a build time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _perf import quantile

if TYPE_CHECKING:
    from foundation.core.config import Recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "synthetic.yaml"


# ---------------------------------------------------------------------------------------- helpers
def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _overrides(args: argparse.Namespace, *, n_subjects: int, shards_root: Path, run_dir: Path) -> list[str]:
    """Recipe overrides of one configuration: only the subject count differs between configurations."""
    steps = args.steps
    return [
        f"datasets.0.options.n_subjects={n_subjects}",
        f"datasets.0.options.stimuli_per_subject={args.stimuli_per_subject}",
        f"datasets.0.options.shared_test={args.shared_test}",
        f"shards.root={shards_root}",
        f"run.dir={run_dir}",
        f"seed={args.seed}",
        f"train.steps={steps}",
        f"train.batch_size={args.batch_size}",
        f"train.shuffle_buffer={args.shuffle_buffer}",
        f"train.eval_every={steps + 1}",  # only the final evaluation (after the last timed step)
        f"train.log_every={steps + 1}",  # only the final log
        f"train.checkpoint_every={steps}",  # one data segment, one checkpoint at the end
        "train.keep_checkpoints=1",
        "train.grad_accum=1",
        "train.num_workers=0",
        "train.mixed_precision=no",
        *args.set,
    ]


def _load(args: argparse.Namespace, *, n_subjects: int, shards_root: Path, run_dir: Path) -> Recipe:
    """The base recipe with this configuration's overrides, validated."""
    from foundation.core.recipe import load_recipe

    return load_recipe(args.recipe, _overrides(args, n_subjects=n_subjects, shards_root=shards_root, run_dir=run_dir))


# ---------------------------------------------------------------------------------------- workers
def shard_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build (or find) the shards of one configuration; runs in its own process."""
    from foundation.data.shards import build_shards, find_shards

    shards_root = Path(args.shards_root)
    recipe = _load(args, n_subjects=args.n, shards_root=shards_root, run_dir=shards_root / "_no-run")  # never made
    reused = find_shards(recipe) is not None
    t0 = time.perf_counter()
    indices = build_shards(recipe, progress=False)
    seconds = time.perf_counter() - t0
    index = next(iter(indices.values()))
    counts = {split: sum(v.values()) for split, v in index.data["counts"].items()}
    tars = sum(len(v) for v in index.data["shards"].values())
    disk = sum(p.stat().st_size for p in index.root.rglob("*") if p.is_file())
    return {"seconds": seconds, "reused": reused, "peak_rss_mib": _peak_rss_mib(), "samples": counts,
            "tars": tars, "shard_bytes": disk, "directory": str(index.root)}


def train_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Construct the Trainer and run ``fit`` with step timestamps; runs in its own process."""
    import torch

    from foundation.engine.trainer import Trainer

    torch.set_num_threads(args.threads)
    rss_start = _peak_rss_mib()

    class _TimedStep:
        """Delegates everything to ``inner``; appends a timestamp before and after each ``step()``
        (and, with ``cpu_after``, the process CPU time after it)."""

        def __init__(self, inner: Any, *, before: list[float], after: list[float],
                     cpu_after: list[float] | None = None) -> None:
            self._inner, self._before, self._after, self._cpu_after = inner, before, after, cpu_after

        def step(self, *a: Any, **kw: Any) -> Any:
            self._before.append(time.perf_counter())
            out = self._inner.step(*a, **kw)
            self._after.append(time.perf_counter())
            if self._cpu_after is not None:
                self._cpu_after.append(time.process_time())
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    class TimedTrainer(Trainer):
        """:class:`Trainer` whose ``fit`` leaves timestamps; the loop itself is untouched."""

        def __init__(self, recipe: Any) -> None:
            super().__init__(recipe, progress=False)
            self.forward_start: list[float] = []
            self.opt_before: list[float] = []
            self.opt_after: list[float] = []
            self.sched_before: list[float] = []
            self.sched_after: list[float] = []
            self.sched_cpu_after: list[float] = []
            self.eval_rss_mib: float | None = None
            self.eval_started: float | None = None
            self.optimizer = _TimedStep(self.optimizer, before=self.opt_before, after=self.opt_after)
            self.scheduler = _TimedStep(self.scheduler, before=self.sched_before, after=self.sched_after,
                                        cpu_after=self.sched_cpu_after)

        def _forward(self, model: Any, batch: Any) -> Any:
            if model.training:
                self.forward_start.append(time.perf_counter())
            return super()._forward(model, batch)

        def evaluate(self, split: str) -> dict[str, Any] | None:
            if self.eval_rss_mib is None:  # the first evaluation comes after the last training step
                self.eval_rss_mib = _peak_rss_mib()
                self.eval_started = time.perf_counter()
            return super().evaluate(split)

    with tempfile.TemporaryDirectory(prefix="bench-subject-scaling-run-") as run_dir:
        recipe = _load(args, n_subjects=args.n, shards_root=Path(args.shards_root), run_dir=Path(run_dir))
        t0 = time.perf_counter()
        trainer = TimedTrainer(recipe)
        init_seconds = time.perf_counter() - t0
        rss_init = _peak_rss_mib()
        profile_table = None
        t_fit = time.perf_counter()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.fit()
            profile_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        else:
            trainer.fit()
        fit_seconds = time.perf_counter() - t_fit
        eval_seconds = time.perf_counter() - (trainer.eval_started or time.perf_counter())
        core = trainer.core
        table = core.subject_tokens.weight
        state = trainer.optimizer.state.get(table, {})
        adam_bytes = sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim())
        history = trainer.state.history
        trainer.accelerator.end_training()

    n = len(trainer.sched_after)
    if n != args.steps or len(trainer.forward_start) != n or len(trainer.opt_after) != n:
        raise RuntimeError(f"expected {args.steps} timed steps, saw {n} scheduler / {len(trainer.forward_start)} "
                           f"forward / {len(trainer.opt_after)} optimizer steps")
    idx = range(max(args.warmup, 1), n)  # step i runs from the end of step i-1 to the end of step i
    step = [trainer.sched_after[i] - trainer.sched_after[i - 1] for i in idx]
    data = [trainer.forward_start[i] - trainer.sched_after[i - 1] for i in idx]
    fwd_bwd = [trainer.opt_before[i] - trainer.forward_start[i] for i in idx]
    opt = [trainer.opt_after[i] - trainer.opt_before[i] for i in idx]
    cpu = [trainer.sched_cpu_after[i] - trainer.sched_cpu_after[i - 1] for i in idx]
    return {
        "threads": torch.get_num_threads(),
        "init_seconds": init_seconds,
        "fit_seconds": fit_seconds,
        "final_eval_and_checkpoint_seconds": eval_seconds,
        "timed_steps": len(step),
        "step_ms": [1e3 * x for x in step],
        "cpu_ms": [1e3 * x for x in cpu],
        "data_ms": [1e3 * x for x in data],
        "fwd_bwd_clip_ms": [1e3 * x for x in fwd_bwd],
        "optimizer_ms": [1e3 * x for x in opt],
        "batch_size": args.batch_size,
        "samples_per_s": args.batch_size * len(step) / sum(step),
        "peak_rss_mib_start": rss_start,
        "peak_rss_mib_after_init": rss_init,
        "peak_rss_mib_train": trainer.eval_rss_mib,
        "peak_rss_mib_end": _peak_rss_mib(),
        "parameters": trainer.n_params,
        "vocab": len(core.vocab),
        "token_table_shape": list(table.shape),
        "token_table_bytes": table.numel() * table.element_size(),
        "token_adam_state_bytes": adam_bytes,
        "val_mAP": history[-1]["val_mAP"] if history else None,
        "profile": profile_table,
    }


def paired_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One Trainer per subject count in one process, training steps interleaved round-robin.

    Load from other processes changes from second to second; interleaving single steps puts every
    configuration under the same load, so per-round ratios compare subject counts far more tightly
    than separate runs can.  Each step is the body of ``Trainer.fit`` on the Trainer's own model,
    optimizer, scheduler and data stream (no evaluation, logging or checkpointing).
    """
    import torch

    from foundation.objectives.losses import clip_mused_loss
    from foundation.engine.trainer import Trainer

    torch.set_num_threads(args.threads)
    counts = list(args.subjects)

    def one_step(trainer: Trainer, batches: Any) -> None:
        acc, t = trainer.accelerator, trainer.recipe.train
        batch = next(batches).to(acc.device)
        with acc.accumulate(trainer.model):
            with acc.autocast():
                out = trainer._forward(trainer.model, batch)
            loss, _ = clip_mused_loss(out, batch.labels, batch.low, batch.high, trainer.recipe.loss)
            acc.backward(loss)
            if acc.sync_gradients and t.max_grad_norm:
                acc.clip_grad_norm_(trainer.model.parameters(), t.max_grad_norm)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scheduler.step()

    with tempfile.TemporaryDirectory(prefix="bench-subject-scaling-paired-") as tmp:
        trainers, streams = {}, {}
        for n in counts:
            recipe = _load(args, n_subjects=n, shards_root=Path(args.shards_root), run_dir=Path(tmp) / str(n))
            trainer = Trainer(recipe, progress=False)
            trainer.model.train()
            t = recipe.train
            (stream,) = trainer.streams.values()
            trainers[n] = trainer
            streams[n] = iter(stream.train_batches(t.batch_size, seed=recipe.seed, segment=0,
                                                   shuffle_buffer=t.shuffle_buffer))
        times: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(args.warmup + args.paired_steps):
            k = r % len(counts)
            for n in counts[k:] + counts[:k]:  # rotate the order: no count always runs first
                t0 = time.perf_counter()
                one_step(trainers[n], streams[n])
                if r >= args.warmup:
                    times[n].append(1e3 * (time.perf_counter() - t0))
    first = counts[0]
    return {"batch_size": args.batch_size, "step_ms": {str(n): times[n] for n in counts},
            "ratio_to_first": {str(n): [a / b for a, b in zip(times[n], times[first])] for n in counts}}


# ---------------------------------------------------------------------------------------- driver
def _run_worker(kind: str, args: argparse.Namespace, n: int, shards_root: Path) -> dict[str, Any]:
    """Run one worker phase in a fresh interpreter (so ``ru_maxrss`` is that phase's own peak)."""
    with tempfile.TemporaryDirectory(prefix="bench-subject-scaling-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *_cli_args(args),
               "--worker", kind, "--n", str(n), "--shards-root", str(shards_root), "--result", str(result)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0 or not result.is_file():
            raise RuntimeError(f"{kind} worker for {n} subjects failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def _cli_args(args: argparse.Namespace) -> list[str]:
    """The options that define a run, spelt out (for workers and the rerun line)."""
    out = ["--subjects", *map(str, args.subjects), "--recipe", str(args.recipe),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--shuffle-buffer", str(args.shuffle_buffer), "--stimuli-per-subject", str(args.stimuli_per_subject),
           "--shared-test", str(args.shared_test), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--paired-steps", str(args.paired_steps), "--seed", str(args.seed)]
    if args.set:
        out += ["--set", *args.set]
    if args.profile:
        out.append("--profile")
    return out


def _relative(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter rerun lines)."""
    path = Path(path)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)


def rerun_command(args: argparse.Namespace) -> str:
    """The shell command that repeats this benchmark with every option spelt out."""
    parts = [_relative(sys.executable), _relative(Path(__file__).resolve()), *_cli_args(args)]
    if args.shards_root:
        parts += ["--shards-root", str(args.shards_root)]
    if args.out:
        parts += ["--out", str(args.out)]
    return shlex.join(parts)


def _fmt_ms(xs: Sequence[float]) -> str:
    """``median (p25–p75)``."""
    return f"{statistics.median(xs):.1f} ({quantile(xs, 0.25):.1f}–{quantile(xs, 0.75):.1f})"


def _pooled(runs: list[dict[str, Any]], key: str) -> list[float]:
    """One per-step series pooled over the repeated training runs of a configuration."""
    return [x for run in runs for x in run[key]]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per subject count; step figures pool every timed step of every repeat."""
    head = ("| subjects | train / val samples | shard build s (peak RSS MiB) | median step ms (IQR) "
            "| per-run medians ms | vs first | CPU ms/step | data ms | fwd+bwd+clip ms | optimizer ms "
            "| samples/s | peak RSS train MiB (end) | parameters | token table KiB (+Adam) | val mAP |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    first = None
    for r in rows:
        s, runs = r["shard"], r["train"]
        step = _pooled(runs, "step_ms")
        median = statistics.median(step)
        first = first or median
        build = "reused" if s["reused"] else f"{s['seconds']:.1f}"
        maps = sorted({f"{t['val_mAP']:.3f}" for t in runs if t["val_mAP"] is not None})
        per_run = ", ".join(f"{statistics.median(t['step_ms']):.1f}" for t in runs)
        t = runs[0]  # sizes are the same in every repeat; memory: the largest of the repeats
        rss_train = max(x["peak_rss_mib_train"] for x in runs)
        rss_end = max(x["peak_rss_mib_end"] for x in runs)
        lines.append(
            f"| {r['subjects']} | {s['samples'].get('train', 0)} / {s['samples'].get('val', 0)} "
            f"| {build} ({s['peak_rss_mib']:.0f}) | {_fmt_ms(step)} | {per_run} | ×{median / first:.3f} "
            f"| {statistics.median(_pooled(runs, 'cpu_ms')):.1f} "
            f"| {statistics.median(_pooled(runs, 'data_ms')):.1f} "
            f"| {statistics.median(_pooled(runs, 'fwd_bwd_clip_ms')):.1f} "
            f"| {statistics.median(_pooled(runs, 'optimizer_ms')):.2f} | {1e3 * t['batch_size'] / median:.0f} "
            f"| {rss_train:.0f} ({rss_end:.0f}) | {t['parameters']:,} "
            f"| {t['token_table_bytes'] / 1024:.0f} (+{t['token_adam_state_bytes'] / 1024:.0f}) "
            f"| {' / '.join(maps) or '–'} |")
    return "\n".join(lines)


def paired_table(paired: dict[str, Any]) -> str:
    """One row per subject count of the paired (interleaved) run."""
    lines = ["| subjects | median step ms (IQR) | step ratio to first, median (IQR) | samples/s |",
             "|---|---|---|---|"]
    for n, step in paired["step_ms"].items():
        ratio = paired["ratio_to_first"][n]
        lines.append(f"| {n} | {_fmt_ms(step)} | {statistics.median(ratio):.3f} "
                     f"({quantile(ratio, 0.25):.3f}–{quantile(ratio, 0.75):.3f}) "
                     f"| {paired['batch_size'] * 1e3 / statistics.median(step):.0f} |")
    return "\n".join(lines)


def schedule(subjects: Sequence[int], repeats: int) -> list[tuple[int, int]]:
    """``(repeat, subjects)`` in alternating order (A B C, C B A, …) so slow drifts in machine load
    fall on every configuration alike instead of on whichever runs last."""
    out = []
    for r in range(repeats):
        out += [(r, n) for n in (subjects if r % 2 == 0 else list(reversed(subjects)))]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[9, 100, 1000], help="subject counts to compare")
    p.add_argument("--steps", type=int, default=150, help="training steps per configuration")
    p.add_argument("--warmup", type=int, default=20, help="first steps not counted in the step statistics")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--stimuli-per-subject", type=int, default=24, help="own stimuli per subject (train + val)")
    p.add_argument("--shared-test", type=int, default=10, help="shared test stimuli seen by every subject")
    p.add_argument("--shuffle-buffer", type=int, default=128,
                   help="train.shuffle_buffer; keep it below the smallest training set (the loader caps the "
                        "buffer at the training-set size, which would make it differ between counts)")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each worker")
    p.add_argument("--repeats", type=int, default=2,
                   help="training runs per configuration, interleaved across configurations (A B C, C B A, …)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE.relative_to(REPO)),
                   help="base recipe (relative paths are taken from the repository root)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra recipe overrides")
    p.add_argument("--shards-root", help="keep (and reuse) shards here; default: a temporary directory")
    p.add_argument("--out", help="write every measurement (raw step times included) as JSON here")
    p.add_argument("--profile", action="store_true",
                   help="also run torch.profiler around fit and print its top operators per configuration")
    p.add_argument("--paired-steps", type=int, default=100,
                   help="steps per configuration of the paired run (one process, steps interleaved); 0: skip it")
    p.add_argument("--worker", choices=["shard", "train", "paired"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        os.chdir(REPO)
        result = {"shard": shard_worker, "train": train_worker, "paired": paired_worker}[args.worker](args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    if args.steps < args.warmup + 2:
        raise SystemExit(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by at least 2")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")

    print(f"rerun: {rerun_command(args)}", flush=True)
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s) per worker, load average {os.getloadavg()[0]:.2f}", flush=True)
    tmp_root = None
    if args.shards_root:
        shards_root = Path(args.shards_root).resolve()
    else:
        tmp_root = Path(tempfile.mkdtemp(prefix="bench-subject-scaling-shards-"))
        shards_root = tmp_root
    shards: dict[int, dict[str, Any]] = {}
    trains: dict[int, list[dict[str, Any]]] = {n: [] for n in args.subjects}
    t0 = time.perf_counter()
    try:
        for n in args.subjects:
            shards[n] = shard = _run_worker("shard", args, n, shards_root)
            built = "reused" if shard["reused"] else f"built in {shard['seconds']:.1f} s"
            print(f"  {n} subjects: shards {built} ({shard['tars']} tars, {shard['shard_bytes'] / 2**20:.1f} MiB)",
                  flush=True)
        for r, n in schedule(args.subjects, args.repeats):
            train = _run_worker("train", args, n, shards_root)
            trains[n].append(train)
            print(f"  {n} subjects, run {r + 1}/{args.repeats}: "
                  f"median step {statistics.median(train['step_ms']):.1f} ms "
                  f"(CPU {statistics.median(train['cpu_ms']):.1f} ms), fit {train['fit_seconds']:.1f} s "
                  f"(final eval + checkpoint {train['final_eval_and_checkpoint_seconds']:.1f} s), "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            if train.get("profile"):
                print(f"\ntorch.profiler, {n} subjects (whole fit, self CPU time):\n{train['profile']}\n")
        paired = None
        if args.paired_steps:
            paired = _run_worker("paired", args, 0, shards_root)
            print("  paired run: median step " + ", ".join(
                f"{n}: {statistics.median(v):.1f} ms" for n, v in paired["step_ms"].items()), flush=True)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    rows = [{"subjects": n, "shard": shards[n], "train": trains[n]} for n in args.subjects]
    smallest = min(shards[n]["samples"].get("train", 0) for n in args.subjects)
    wall = time.perf_counter() - t0

    print(f"\nbatch {args.batch_size}, {args.steps} steps × {args.repeats} interleaved run(s) per configuration "
          f"({args.warmup} warm-up steps of each run not counted), "
          f"{args.stimuli_per_subject} own + {args.shared_test} shared test stimuli per subject, "
          f"shuffle buffer {args.shuffle_buffer}, recipe {args.recipe}, {args.threads} thread(s); "
          f"wall time {wall:.0f} s\n")
    if args.shuffle_buffer > smallest:
        print(f"note: --shuffle-buffer {args.shuffle_buffer} exceeds the smallest training set ({smallest} "
              f"samples); the loader caps it there, so the counts do not use the same buffer\n")
    print(markdown_table(rows))
    if paired is not None:
        print(f"\nPaired: one process, one Trainer per subject count, single training steps interleaved "
              f"round-robin ({args.paired_steps} timed steps each after {args.warmup} warm-up rounds); "
              f"ratio = this count's step / the {args.subjects[0]}-subject step of the same round.\n")
        print(paired_table(paired))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": rerun_command(args), "wall_seconds": wall,
                                   "torch": torch.__version__, "cpus": os.cpu_count(), "results": rows,
                                   "paired": paired}, indent=1))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
