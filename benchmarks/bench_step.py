"""Step efficiency against this machine's matmul peak (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_step.py                                  # both shapes, CPU
    .venv/bin/python benchmarks/bench_step.py --shape nsd --batch 64 --steps 6 --out runs/bench_step.json
    .venv/bin/python benchmarks/bench_step.py --shape hcp --batch 4 --steps 3
    .venv/bin/python benchmarks/bench_step.py --device cuda --batch 256         # GPU: bf16 autocast, bf16 GEMM peak

Two model shapes, each trained with exactly the loop body of ``foundation.engine.trainer.Trainer.fit`` (subject
lookup, ``fmri.float()``, forward under autocast, the full CLIP-MUSED loss with all four terms, backward,
gradient clipping at 1.0, ``torch.optim.Adam``, ``zero_grad(set_to_none=True)``, loss terms accumulated
on the device without a sync) on random data of the right shapes:

* ``nsd``: ``recipes/nsd.yaml`` — 24 layers × 512 × 8 heads, MLP 4×, dropout 0.1, 10 ROI tokens of
  ``--token-dim`` (NSD's PCA width) + 2 subject tokens, 80 COCO labels, CLIP guidance (low 768, high 512),
  λ⊥ = 1e-3, λ_low = 1e-4, λ_high = 1e-3; 8 subjects.  Default batch 64 (the paper's).
* ``hcp``: ``recipes/hcp.yaml`` — the plugin's crop of the MNI grid, 111×127×111 (``2:,4:-5,:-2`` of
  113×136×113; ~446k in-mask voxels per subject), padded on the device to 112×128×112, through the
  ResNet-style patchifier [32, 64, 128, 512] with the 2 Transformer layers × 8 heads interleaved →
  7×8×7 = 392 tokens of 512, 859 WordNet labels, λ_low = 0.1; 4 subjects; the recipe's ``volume_input``,
  ``volume_readout`` and ``volume_linear_rank`` (``--volume-input raw --volume-readout attention
  --volume-linear-rank 0``: the paper's model).  Default batch 4 (the
  recipe's 64 is a GPU setting). ``--patchifier cnn --channels 16 32 64 128`` measures the earlier
  plain CNN; ``--hcp-grid 113 136 113`` the uncropped grid.

Per shape it reports the median step time, samples/s, the model FLOPs of one step (counted by
``torch.utils.flop_counter.FlopCounterMode`` over forward + loss + backward; CPU flash attention
included; the optimizer's elementwise work is not counted), the achieved FLOP/s and its fraction of
the machine's matmul peak.  The peak is a ``--gemm``×``--gemm`` GEMM (fp32 on CPU, bf16 on a GPU;
``--gemm-dtype bf16`` on a CPU with AMX, the peak a ``--amp`` step can reach)
timed in the same process, *interleaved with the steps* (one GEMM timing per step), so load from
other jobs hits both alike: "efficiency" is the median over steps of (step FLOP/s ÷ the GEMM FLOP/s
measured right before that step).  Each shape runs in its own subprocess, so its peak RSS is its own.

``--profile N`` also runs N steps under ``torch.profiler`` and prints the top operators by self CPU
time.  ``--adam foreach|fused`` and ``--compile`` measure what the optimizer implementation and
``torch.compile`` of the model would change (the default mirrors ``foundation.engine.trainer``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf

REPO = _perf.REPO
HCP_GRID = (111, 127, 111)  # the hcp plugin's default crop "2:,4:-5,:-2" of the 113×136×113 MNI grid
HCP_BRAIN_VOXELS = 446_000
SHAPES = ("nsd", "hcp")
DEFAULT_BATCH = {"nsd": 64, "hcp": 4}
DEFAULT_STEPS = {"nsd": 5, "hcp": 3}
#: recipes/hcp.yaml's model section: the HCP shape's input and read-out follow the recipe users run
HCP_MODEL = yaml.safe_load((REPO / "recipes" / "hcp.yaml").read_text()).get("model") or {}


# ------------------------------------------------------------------------------------------ the setup
@dataclasses.dataclass
class Setup:
    shape: str
    model: Any
    forward: Any  # model or torch.compile(model)
    optimizer: Any
    loss_cfg: Any
    batches: list[dict[str, Any]]
    bank: Any  # (S, Vmax) long voxel-index table for volume data, else None
    bank_rows: dict[str, int]  # global subject id -> row of ``bank`` (as foundation.data.voxels.VoxelIndexBank)
    dataset: str
    tokens: int
    parameters: int


def ellipsoid_mask(grid: tuple[int, int, int], voxels: int, jitter: float, rng) -> Any:
    """A centred ellipsoid with about ``voxels`` voxels, radii jittered per subject (as the HCP bench)."""
    import numpy as np

    k = (voxels / (4 / 3 * np.pi * np.prod([g / 2 for g in grid]))) ** (1 / 3)
    k = k * (1 + jitter * rng.uniform(-1, 1, 3))
    axes = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (kk * n / 2) for n, kk in zip(grid, k)], indexing="ij",
                       sparse=True)
    return sum(a**2 for a in axes) <= 1.0


def build(shape: str, batch: int, device: Any, args: argparse.Namespace) -> Setup:
    import numpy as np
    import torch

    from foundation.core.api import DatasetInfo
    from foundation.core.config import LossConfig, ModelConfig
    from foundation.model import CLIPMUSED

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if shape == "nsd":
        cfg = ModelConfig(dim=512, depth=args.depth or 24, heads=8, mlp_ratio=4.0, dropout=0.1, tokens="subject", head_hidden=512)
        subjects = tuple(f"subj{i:02d}" for i in range(1, 9))
        info = DatasetInfo(kind="roi", label_names=tuple(f"c{i}" for i in range(80)), subjects=subjects,
                           token_shape=(10, args.token_dim))
        loss_cfg = LossConfig(lambda_orth=1e-3, lambda_low=1e-4, lambda_high=1e-3)
        lr, low_dim, high_dim = 1e-4, 768, 512
    else:
        cfg = ModelConfig(dim=512, depth=args.depth or 2, heads=8, mlp_ratio=4.0, dropout=0.1, tokens="subject",
                          head_hidden=512, volume_channels=list(args.channels), patchifier=args.patchifier,
                          volume_input=args.volume_input, volume_readout=args.volume_readout,
                          volume_linear_rank=args.volume_linear_rank)
        grid = tuple(args.hcp_grid)
        subjects = tuple(f"{100610 + i}" for i in range(4))
        info = DatasetInfo(kind="volume", label_names=tuple(f"w{i}" for i in range(859)), subjects=subjects,
                           grid=grid)
        loss_cfg = LossConfig(lambda_orth=1e-3, lambda_low=0.1, lambda_high=1e-3)
        lr, low_dim, high_dim = 1e-3, 768, 512
    ds = shape
    model = CLIPMUSED(cfg, {ds: info}, [f"{ds}/{s}" for s in subjects]).to(device)
    if shape == "hcp" and args.channels_last:
        model.adapters[ds].to(memory_format=torch.channels_last_3d)
    model.train()
    if args.adam == "default":  # what foundation.engine.trainer builds
        from foundation.engine.optim import build_adam

        optimizer = build_adam([{"params": model.parameters()}], lr=lr, weight_decay=0.0, device=device)
    else:
        adam_kw = {"foreach": {"foreach": True}, "fused": {"fused": True}, "loop": {"foreach": False, "fused": False}}
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0, **adam_kw[args.adam])
    forward = torch.compile(model) if args.compile else model

    bank = None
    if shape == "hcp":
        masks = [ellipsoid_mask(grid, HCP_BRAIN_VOXELS, 0.03, rng) for _ in subjects]
        flat = [np.flatnonzero(m.reshape(-1)) for m in masks]
        vmax = max(len(f) for f in flat)
        table = np.full((len(subjects), vmax), math.prod(grid), dtype=np.int64)
        for i, f in enumerate(flat):
            table[i, : len(f)] = f
        bank = torch.from_numpy(table).to(device)
        lengths = [len(f) for f in flat]

    pin = torch.device(device).type == "cuda"
    batches = []
    for _ in range(2):  # two host batches, alternated (as a loader's fresh tensors would be)
        subj = [subjects[int(i)] for i in rng.integers(0, len(subjects), batch)]
        if shape == "nsd":
            fmri = torch.randn(batch, 10, args.token_dim, generator=gen).half()
        else:
            fmri = torch.zeros(batch, vmax, dtype=torch.float16)
            for b, s in enumerate(subj):
                n = lengths[subjects.index(s)]
                fmri[b, :n] = torch.randn(n, generator=gen).half()
        labels = (torch.rand(batch, info.num_labels, generator=gen) < 0.05).float()
        low = torch.randn(batch, low_dim, generator=gen).half()
        high = torch.randn(batch, high_dim, generator=gen).half()
        tensors = {"fmri": fmri, "labels": labels, "low": low, "high": high}
        if pin:
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        batches.append({**tensors, "subjects": [f"{ds}/{s}" for s in subj]})
    tokens = model.n_readout + model.adapters[ds].num_tokens
    bank_rows = {f"{ds}/{s}": i for i, s in enumerate(subjects)}
    return Setup(shape, model, forward, optimizer, loss_cfg, batches, bank, bank_rows, ds, tokens,
                 sum(p.numel() for p in model.parameters()))


def make_step(setup: Setup, device: Any, args: argparse.Namespace):
    """The body of ``Trainer.fit`` for one micro-batch (grad_accum 1), without Accelerate's wrappers."""
    import torch

    from foundation.objectives.losses import clip_mused_loss

    dev = torch.device(device)
    amp = args.amp if args.amp is not None else dev.type == "cuda"
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp)
    model, optimizer = setup.model, setup.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    running: dict[str, Any] = {}
    counter = [0]

    def core(fmri, idx, voxel_index, labels, low, high):
        with autocast:
            out = setup.forward(setup.dataset, fmri.float(), idx, voxel_index=voxel_index)
        return clip_mused_loss(out, labels, low, high, setup.loss_cfg)

    if args.compile_step:  # forward + loss in one graph; AOTAutograd compiles their backward with them
        core = torch.compile(core, mode=args.compile_step)

    def forward_loss(batch: dict[str, Any]):
        b = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        idx = model.subject_index(b["subjects"]).to(dev)
        voxel_index = None
        if setup.bank is not None:
            rows = torch.tensor([setup.bank_rows[s] for s in b["subjects"]], device=dev)  # as VoxelIndexBank
            voxel_index = setup.bank[rows]
        return core(b["fmri"], idx, voxel_index, b["labels"], b["low"], b["high"])

    def step() -> None:
        batch = setup.batches[counter[0] % len(setup.batches)]
        counter[0] += 1
        loss, terms = forward_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for k, v in terms.items():
            running[k] = running.get(k, 0) + v.detach().float()

    def fwd_bwd() -> None:
        loss, _ = forward_loss(setup.batches[0])
        loss.backward()

    if args.cuda_graph:
        return graphed_step(setup, dev, amp, params, running), fwd_bwd, running
    return step, fwd_bwd, running


def graphed_step(setup: Setup, dev: Any, amp: bool, params: list[Any], running: dict[str, Any]):
    """The whole step (forward, loss, backward, clipping, Adam) captured once as a CUDA graph and replayed.

    What a host-bound step would gain if the trainer did the same: every replay launches the step's
    kernels from the device, and the host only copies the next batch into the graph's input buffers
    (pinned → device, no sync) and looks up its subject rows.  Follows torch.cuda.graphs' "whole network
    capture": three eager steps on a side stream first (allocations, autotuning, Adam's state), the
    optimizer rebuilt ``capturable`` so its step count lives on the device, gradients set to None before
    capture so the captured backward allocates them in the graph's pool.  Autocast runs with its weight
    cache off (a cache filled during capture would be freed with it).
    """
    import torch

    from foundation.objectives.losses import clip_mused_loss

    if dev.type != "cuda":
        raise SystemExit("--cuda-graph needs a CUDA device")
    model = setup.model
    inner = torch.optim.Adam(params, lr=setup.optimizer.param_groups[0]["lr"], weight_decay=0.0,
                             fused=True, capturable=True)
    setup.optimizer = inner
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False)
    first = setup.batches[0]
    static = {k: v.to(dev).clone() for k, v in first.items() if torch.is_tensor(v)}
    static["idx"] = model.subject_index(first["subjects"]).to(dev)
    if setup.bank is not None:
        static["rows"] = torch.tensor([setup.bank_rows[s] for s in first["subjects"]], device=dev)
    terms_out: dict[str, Any] = {}

    def body() -> None:
        voxel_index = setup.bank[static["rows"]] if setup.bank is not None else None
        with autocast:
            out = model(setup.dataset, static["fmri"].float(), static["idx"], voxel_index=voxel_index)
        loss, terms = clip_mused_loss(out, static["labels"], static["low"], static["high"], setup.loss_cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        inner.step()
        terms_out.update({k: v.detach().float() for k, v in terms.items()})

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            inner.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    inner.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    host_idx = {}  # the subject rows of each host batch, looked up once (a loader would hand them over)
    counter = [0]

    def step() -> None:
        batch = setup.batches[counter[0] % len(setup.batches)]
        counter[0] += 1
        for k, v in static.items():
            if k in batch:
                v.copy_(batch[k], non_blocking=True)
        key = id(batch)
        if key not in host_idx:
            idx = model.subject_index(batch["subjects"]).pin_memory()
            rows = torch.tensor([setup.bank_rows[s] for s in batch["subjects"]]).pin_memory() \
                if setup.bank is not None else None
            host_idx[key] = (idx, rows)
        idx, rows = host_idx[key]
        static["idx"].copy_(idx, non_blocking=True)
        if rows is not None:
            static["rows"].copy_(rows, non_blocking=True)
        graph.replay()
        for k, v in terms_out.items():
            running[k] = running.get(k, 0) + v

    return step


# ------------------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    device = args.device
    shape = args.worker
    batch = args.batch or DEFAULT_BATCH[shape]
    steps = args.steps or DEFAULT_STEPS[shape]
    mem_before = _perf.mem_available_gib()
    t_build = time.perf_counter()
    setup = build(shape, batch, device, args)
    step, fwd_bwd, running = make_step(setup, device, args)
    build_s = time.perf_counter() - t_build

    gemm_dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.gemm_dtype]
    gemm = _perf.Gemm(args.gemm, device=device, dtype=gemm_dtype)
    gemm.time(1)  # warm-up (allocations, thread pool)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _perf.sync(device)
    warmup_s = time.perf_counter() - t0

    # FLOPs of one full forward + loss + backward (counted once; same shapes every step)
    setup.optimizer.zero_grad(set_to_none=True)
    flops, per_op = _perf.count_flops(fwd_bwd)
    setup.optimizer.zero_grad(set_to_none=True)

    step_s, gemm_s, step_cpu, gemm_cpu, load = [], [], [], [], []
    for _ in range(steps):
        c = time.process_time()
        gemm_s.append(gemm.time(args.gemm_reps))
        gemm_cpu.append((time.process_time() - c) / (args.gemm_reps + 1))
        t, c = time.perf_counter(), time.process_time()
        step()
        _perf.sync(device)
        step_s.append(time.perf_counter() - t)
        step_cpu.append(time.process_time() - c)
        load.append(os.getloadavg()[0])
    gemm_after = gemm.time(args.gemm_reps)
    float(sum(running.values()))  # the only sync of the accumulated terms (the "logging interval")

    ceiling = None
    if args.ceiling:  # the step's matmuls / convolutions / attention alone, same shapes, fresh inputs
        setup.optimizer.zero_grad(set_to_none=True)
        calls = _perf.record_kernels(fwd_bwd)
        setup.optimizer.zero_grad(set_to_none=True)
        kernel_s = _perf.replay_kernels(calls, device=device, reps=args.ceiling)
        gemm_now = gemm.time(args.gemm_reps)
        ceiling = {"kernels": len(calls), "kernel_s": kernel_s, "gemm_s": gemm_now,
                   "efficiency": (flops / kernel_s) / (gemm.flops / gemm_now),
                   "kernel_share_of_step": kernel_s / statistics.median(step_s),
                   "by_op": dict(Counter(func.overloadpacket.__name__ for func, _, _ in calls))}

    profile = None
    if args.profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof_ctx

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
        with prof_ctx(activities=acts, record_shapes=args.profile_shapes) as prof:
            for _ in range(args.profile):
                step()
            _perf.sync(device)
        profile = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
        if torch.device(device).type == "cuda":  # the same steps by time on the GPU
            profile += "\n" + prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.profile_rows)
        if args.profile_shapes:
            profile += "\n" + prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=2 * args.profile_rows)
        top = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3 / args.profile, "calls": e.count // args.profile}
               for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.profile_rows]]
    else:
        top = None

    syncs = None
    if args.sync_debug and torch.device(device).type == "cuda":  # where one step waits for the GPU
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = dict(Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                             if "synchroniz" in str(w.message)))

    peak = gemm.flops
    per_step_eff = [(flops / s) / (peak / g) for s, g in zip(step_s, gemm_s)]
    # the same ratio in process CPU seconds (both sides use the same threads): less sensitive to
    # being descheduled by other jobs, but it counts OpenMP spin-waiting as work
    per_step_eff_cpu = [(flops / s) / (peak / g) for s, g in zip(step_cpu, gemm_cpu)]
    cuda_mem = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None
    return {
        "shape": shape, "batch": batch, "steps": steps, "warmup": args.warmup, "tokens": setup.tokens,
        "parameters": setup.parameters, "device": device, "threads": torch.get_num_threads(),
        "amp_bf16": args.amp if args.amp is not None else torch.device(device).type == "cuda",
        "compile": args.compile, "compile_step": args.compile_step, "cuda_graph": args.cuda_graph,
        "dynamo_counters": dynamo_counters(), "adam": args.adam, "depth": setup.model.cfg.depth,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "token_dim": args.token_dim if shape == "nsd" else None,
        "flops_per_step": flops, "flops_per_op": per_op,
        "step_s": step_s, "gemm_s": gemm_s, "gemm_s_after": gemm_after, "gemm_n": args.gemm,
        "gemm_dtype": str(gemm.dtype), "loadavg_during": load,
        "median_step_s": statistics.median(step_s),
        "samples_per_s": batch / statistics.median(step_s),
        "achieved_flops": flops / statistics.median(step_s),
        "gemm_flops": peak / statistics.median(gemm_s),
        "efficiency_per_step": per_step_eff,
        "efficiency": statistics.median(per_step_eff),
        "step_cpu_s": step_cpu, "gemm_cpu_s": gemm_cpu,
        "efficiency_cpu_time_per_step": per_step_eff_cpu,
        "efficiency_cpu_time": statistics.median(per_step_eff_cpu),
        "build_s": build_s, "warmup_s": warmup_s,
        "peak_rss_mib": _perf.peak_rss_mib(), "cuda_peak_mib": cuda_mem,
        "mem_available_gib_before": mem_before,
        "profile_table": profile, "profile_top": top, "ceiling": ceiling, "device_syncs": syncs,
    }


def dynamo_counters() -> dict[str, dict[str, int]] | None:
    """torch._dynamo's counters (frames compiled, graph breaks, recompiles, …), None if nothing was compiled:
    whether a ``--compile`` / ``--compile-step`` run ran compiled code at all."""
    if "torch._dynamo" not in sys.modules:
        return None
    from torch._dynamo.utils import counters

    return {group: {str(k): int(v) for k, v in c.items()} for group, c in counters.items() if c} or None


# ------------------------------------------------------------------------------------------ driver
def cli_args(args: argparse.Namespace, shape: str | None = None) -> list[str]:
    out = ["--shape", shape or args.shape, "--steps", str(args.steps or 0), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device, "--gemm", str(args.gemm),
           "--gemm-reps", str(args.gemm_reps), "--gemm-dtype", args.gemm_dtype,
           "--token-dim", str(args.token_dim), "--adam", args.adam,
           "--seed", str(args.seed), "--patchifier", args.patchifier,
           "--channels", *map(str, args.channels), "--hcp-grid", *map(str, args.hcp_grid),
           "--volume-input", args.volume_input, "--volume-readout", args.volume_readout,
           "--volume-linear-rank", str(args.volume_linear_rank)]
    if args.depth:
        out += ["--depth", str(args.depth)]
    if args.batch:
        out += ["--batch", str(args.batch)]
    if args.compile:
        out.append("--compile")
    if args.compile_step:
        out += ["--compile-step", args.compile_step]
    if args.cuda_graph:
        out.append("--cuda-graph")
    if args.amp is not None:
        out.append("--amp" if args.amp else "--no-amp")
    if args.channels_last:
        out.append("--channels-last")
    if args.ceiling:
        out += ["--ceiling", str(args.ceiling)]
    if args.profile:
        out += ["--profile", str(args.profile), "--profile-rows", str(args.profile_rows)]
        if args.profile_shapes:
            out.append("--profile-shapes")
    if args.sync_debug:
        out.append("--sync-debug")
    return out


def run_shape(args: argparse.Namespace, shape: str) -> dict[str, Any]:
    """One shape in a fresh interpreter (own peak RSS, own thread settings)."""
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *cli_args(args, shape), "--worker", shape,
               "--result", str(result)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not result.is_file():
            return {"shape": shape, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        if proc.stderr.strip():  # the worker's warnings (e.g. torch.compile's "skipping cudagraphs due to ...")
            tail = proc.stderr.strip().splitlines()[-40:]
            print(f"  {shape}: the worker's stderr (last {len(tail)} lines):", *tail, sep="\n    ", file=sys.stderr)
        return json.loads(result.read_text())


def table(results: list[dict[str, Any]]) -> str:
    head = ("| shape | batch | tokens | parameters | GFLOP/step | median step ms (IQR) | samples/s "
            "| achieved GFLOP/s | GEMM GFLOP/s | efficiency, median (IQR) | efficiency by CPU time | peak RSS MiB "
            "| load avg |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | – | – | – | – | failed: {r['error'].splitlines()[-1][:80]} |||||||")
            continue
        ms = [1e3 * s for s in r["step_s"]]
        eff = [100 * e for e in r["efficiency_per_step"]]
        mem = f"{r['peak_rss_mib']:.0f}" + (f" (GPU {r['cuda_peak_mib']:.0f})" if r.get("cuda_peak_mib") else "")
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['tokens']} | {r['parameters'] / 1e6:.1f} M "
            f"| {r['flops_per_step'] / 1e9:.1f} | {_perf.med_iqr(ms)} | {r['samples_per_s']:.1f} "
            f"| {r['achieved_flops'] / 1e9:.1f} | {r['gemm_flops'] / 1e9:.1f} | {_perf.med_iqr(eff, '{:.1f}')} % "
            f"| {100 * r['efficiency_cpu_time']:.1f} % | {mem} | {statistics.median(r['loadavg_during']):.1f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: nsd 64, hcp 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: nsd 5, hcp 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (use >= 2 with --compile)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    p.add_argument("--compile-step", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   default=None, help="torch.compile the forward and the loss together in this mode (their backward "
                                      "with them); reduce-overhead replays the step's kernels as CUDA graphs")
    p.add_argument("--amp", dest="amp", action="store_true", default=None,
                   help="bf16 autocast (default: on for cuda, off for cpu, as train.mixed_precision=auto)")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--channels-last", action="store_true",
                   help="convert the 3-D CNN's weights to channels_last_3d first (foundation.engine.trainer does not)")
    p.add_argument("--adam", choices=["default", "foreach", "fused", "loop"], default="default",
                   help="torch.optim.Adam implementation (default: what foundation.engine.trainer builds, "
                        "foundation.engine.optim.build_adam; loop: torch's per-parameter for-loop)")
    p.add_argument("--token-dim", type=int, default=512, help="NSD ROI token width (the PCA dimension)")
    p.add_argument("--patchifier", choices=["resnet", "cnn"], default="resnet", help="HCP volume patchifier")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 512], help="HCP volume_channels")
    p.add_argument("--hcp-grid", type=int, nargs=3, default=list(HCP_GRID), help="HCP grid (default: the crop)")
    p.add_argument("--volume-input", choices=["raw", "standardize"], default=HCP_MODEL.get("volume_input", "raw"),
                   help="HCP model.volume_input (default: recipes/hcp.yaml's)")
    p.add_argument("--volume-readout", choices=["attention", "spatial"],
                   default=HCP_MODEL.get("volume_readout", "attention"),
                   help="HCP model.volume_readout (default: recipes/hcp.yaml's; attention is the paper's)")
    p.add_argument("--volume-linear-rank", type=int, default=HCP_MODEL.get("volume_linear_rank", 0),
                   help="HCP model.volume_linear_rank (default: recipes/hcp.yaml's; 0 is the paper's)")
    p.add_argument("--gemm", type=int, default=4096, help="size n of the n×n reference GEMM")
    p.add_argument("--gemm-dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="dtype of the reference GEMM (auto: fp32 on CPU, bf16 on a GPU); bf16 on a CPU with AMX "
                        "gives the peak a --amp step should be held to")
    p.add_argument("--gemm-reps", type=int, default=2, help="GEMM timings (median) before each step")
    p.add_argument("--ceiling", type=int, default=0, metavar="N",
                   help="also time the step's matmuls/convolutions/attention alone (same shapes, N passes): "
                        "the efficiency the step would reach if everything else were free")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also profile N steps (torch.profiler)")
    p.add_argument("--profile-rows", type=int, default=20)
    p.add_argument("--profile-shapes", action="store_true", help="also print the profile grouped by input shape")
    p.add_argument("--sync-debug", action="store_true",
                   help="cuda: also run one step under torch.cuda.set_sync_debug_mode and print where it syncs")
    p.add_argument("--cuda-graph", action="store_true",
                   help="cuda: capture the whole step (forward, loss, backward, clipping, Adam) as one CUDA graph "
                        "and replay it (what a host-bound step would gain)")
    p.add_argument("--depth", type=int, default=None, help="override the layer count (quick experiments only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write all measurements as JSON here")
    p.add_argument("--worker", choices=SHAPES, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        os.chdir(REPO)
        import importlib.util

        if importlib.util.find_spec("foundation") is None:  # not installed: use this checkout
            sys.path.insert(0, str(REPO))
        Path(args.result).write_text(json.dumps(worker(args)))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    command = _perf.rerun("benchmarks/bench_step.py", cli_args(args) + (["--out", args.out] if args.out else []))
    print(f"rerun: {command}", flush=True)
    info = _perf.machine(args.device)
    print(_perf.machine_line(info), flush=True)
    if args.device == "cpu":
        print("GPU: none on this machine (CPU numbers only; the GPU goal is ≥ 40 % of bf16 peak at batch ≥ 256)")
    shapes = SHAPES if args.shape == "both" else (args.shape,)
    results = []
    for shape in shapes:
        r = run_shape(args, shape)
        results.append(r)
        if "error" in r:
            print(f"  {shape}: FAILED {r['error']}", flush=True)
        else:
            print(f"  {shape}: batch {r['batch']}, median step {1e3 * r['median_step_s']:.1f} ms, "
                  f"efficiency {100 * r['efficiency']:.1f} % of {r['gemm_dtype']} GEMM peak", flush=True)
        if r.get("device_syncs") is not None:
            syncs = r["device_syncs"]
            print(f"  {shape}: device syncs in one step: {sum(syncs.values())} "
                  + (", ".join(f"{k} x{v}" for k, v in syncs.items()) or "(none)"), flush=True)
        if r.get("dynamo_counters"):
            shown = {k: v for k, v in r["dynamo_counters"].items() if k != "aten_mm_info"}  # (the JSON has all)
            print(f"  {shape}: torch._dynamo counters: {json.dumps(shown)}", flush=True)
        if r.get("profile_table"):
            print(f"\ntorch.profiler, {shape}, {args.profile} step(s), sorted by self CPU time"
                  f"{' (then by GPU time)' if args.device.startswith('cuda') else ''}:\n{r['profile_table']}")
    print()
    print(table(results))
    ceilings = [r for r in results if r.get("ceiling")]
    if ceilings:
        print("\nCeiling: the step's FLOP-bearing kernels alone (same shapes and layouts, fresh inputs, "
              "everything else free)\n")
        print("| shape | kernels | kernels alone ms | step ms | kernels' share of the step | "
              "ceiling efficiency | step efficiency |")
        print("|---|---|---|---|---|---|---|")
        for r in ceilings:
            c = r["ceiling"]
            ops = ", ".join(f"{n} {k}" for n, k in sorted(c["by_op"].items()))
            print(f"| {r['shape']} | {c['kernels']} ({ops}) | {1e3 * c['kernel_s']:.0f} | "
                  f"{1e3 * r['median_step_s']:.0f} | {100 * c['kernel_share_of_step']:.1f} % | "
                  f"{100 * c['efficiency']:.1f} % | {100 * r['efficiency']:.1f} % |")
    print("\nGFLOP/step: FlopCounterMode over forward + loss + backward (matmul/conv/attention FLOPs). "
          f"Efficiency: step FLOP/s ÷ the {args.gemm}² {args.gemm_dtype} GEMM FLOP/s timed just before that step, "
          "median over steps.")
    out = {"benchmark": "step", "command": command, "machine": info, "loadavg_end": list(os.getloadavg()),
           "results": results}
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
