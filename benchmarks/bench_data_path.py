"""Data path: what the shard loader delivers vs. what the model consumes (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_data_path.py                                    # both shapes
    .venv/bin/python benchmarks/bench_data_path.py --shape nsd --workers 0 2 --step-json runs/perf/step.json
    .venv/bin/python benchmarks/bench_data_path.py --keep /tmp/data-path-shards        # reuse the shards

Shards are built once (under a temporary folder, or ``--keep DIR`` to reuse them) from the ``synthetic``
plugin at the two model shapes of ``bench_step.py``:

* ``nsd``: ROI mode, 10 ROI tokens × ``--token-dim`` (512) float16 per sample, planted guidance of
  768 (low) and 512 (high) dims — the CLIP widths — and 12 labels; 8 subjects.
* ``hcp``: volume mode on the full 113×136×113 grid (the synthetic brain is an ellipsoid of ~0.78 M
  voxels, more than HCP's ~0.45 M, so the loader moves *more* bytes than real HCP would), 768/512
  guidance; 2 subjects × ``--seconds`` volumes.

Then ``DatasetStream.train_batches`` — exactly what ``foundation.engine.trainer`` iterates: weighted shard
sampling, tar reading (with the tar cache of ``--cache-mib``, the trainer's ``train.shard_cache_mib``; 0 = off),
shuffle buffer, ``decode``, ``collate`` — is timed with ``num_workers`` in ``--workers``, each batch moved to
``--device`` (``Batch.to``, non-blocking; pinned by the DataLoader
on CUDA).  Reported: samples/s in the steady state (after the first batch, which waits for the shuffle
buffer to fill), the time to the first batch, and the ratio to the samples/s the model consumes at
the same shape (read from ``--step-json``, a ``bench_step.py --out`` file, when given).  The goal is a
loader ≥ 10× faster than the model; ``decode`` and ``collate`` are also timed alone on samples held in
memory, so the report can say which stage limits the loader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _perf

REPO = _perf.REPO
SHAPES = ("nsd", "hcp")
DEFAULT_BATCH = {"nsd": 64, "hcp": 4}


def recipe_for(shape: str, root: Path, args: argparse.Namespace):
    from foundation.core.config import Recipe
    from foundation.core.recipe import from_dict, validate_recipe

    common = {"n_categories": 12, "low_dim": 768, "high_dim": 512}
    if shape == "nsd":
        options = {"mode": "roi", "n_subjects": 8, "n_rois": 10, "token_dim": args.token_dim,
                   "stimuli_per_subject": args.stimuli_per_subject, "shared_test": 16, **common}
        per_shard = 256
    else:
        options = {"mode": "volume", "n_subjects": 2, "grid": [113, 136, 113], "seconds": args.seconds, **common}
        per_shard = 16
    data = {"name": f"datapath-{shape}", "seed": 0,
            "datasets": [{"plugin": "synthetic", "name": shape, "options": options}],
            "shards": {"root": str(root), "samples_per_shard": per_shard}}
    recipe = from_dict(Recipe, data)
    validate_recipe(recipe)
    return recipe


def time_loader(stream, batch: int, workers: int, device: Any, n_batches: int, shuffle_buffer: int,
                cache_mib: int = 0) -> dict[str, Any]:
    import torch

    from foundation.data.tars import TAR_CACHE

    TAR_CACHE.clear()  # each configuration starts as a fresh trainer process does
    dev = torch.device(device)
    t0 = time.perf_counter()
    it = iter(stream.train_batches(batch, seed=0, segment=0, shuffle_buffer=shuffle_buffer,
                                   num_workers=workers, pin_memory=dev.type == "cuda", cache_bytes=cache_mib << 20))
    first = next(it).to(dev)
    _perf.sync(dev)
    t_first = time.perf_counter() - t0
    times = []
    c0 = time.process_time()
    t_all = time.perf_counter()
    for _ in range(n_batches):
        t = time.perf_counter()
        b = next(it).to(dev)
        _perf.sync(dev)
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t_all
    cpu = time.process_time() - c0
    del it
    return {"workers": workers, "cache_mib": cache_mib, "batch": batch, "batches": n_batches, "first_batch_s": t_first,
            "samples_per_s": batch * n_batches / wall, "median_batch_s": statistics.median(times),
            "main_process_cpu_s_per_batch": cpu / n_batches, "fmri_dtype": str(first.fmri.dtype),
            "fmri_shape": list(first.fmri.shape), "batch_bytes": sum(
                t.numel() * t.element_size() for t in (b.fmri, b.labels, b.low, b.high))}


def time_stages(stream, batch: int, reps: int) -> dict[str, Any]:
    """decode and collate alone, on raw samples already in memory (no tar reading, no shuffle); medians."""
    import webdataset as wds

    from foundation.data.loader import decode
    from foundation.data.tars import read_tars

    shards = stream.index.shards("train", stream.subjects)
    raw = []
    for sample in read_tars(({"url": str(p)} for p, _, _ in shards), expected={}):
        raw.append(sample)
        if len(raw) >= batch:
            break
    decoded = [decode(s) for s in raw]
    stream._collate(decoded)  # warm-up (allocator, header cache)
    dec, col = [], []
    for _ in range(reps):
        t = time.perf_counter()
        decoded = [decode(s) for s in raw]
        dec.append(time.perf_counter() - t)
        t = time.perf_counter()
        stream._collate(decoded)
        col.append(time.perf_counter() - t)
    # tar reading alone (sequential pass over the first shards)
    t = time.perf_counter()
    n = 0
    for p, _, _ in shards[:4]:
        for _ in wds.tarfile_samples([{"url": str(p)}]):
            n += 1
    read_s = (time.perf_counter() - t) / max(n, 1)
    nbytes = sum(len(v) for k, v in raw[0].items() if isinstance(v, bytes))
    return {"decode_samples_per_s": len(raw) / statistics.median(dec),
            "collate_samples_per_s": len(raw) / statistics.median(col),
            "tar_read_samples_per_s": 1 / read_s, "sample_bytes": nbytes, "stage_batch": len(raw)}


def model_rate(step_json: str | None, shape: str) -> tuple[float | None, int | None]:
    if not step_json or not Path(step_json).is_file():
        return None, None
    data = json.loads(Path(step_json).read_text())
    for r in data.get("results", []):
        if r.get("shape") == shape and "samples_per_s" in r:
            return r["samples_per_s"], r["batch"]
    return None, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from foundation.data.loader import DatasetStream
    from foundation.data.shards import build_shards

    torch.set_num_threads(args.threads)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-data-path-"))
    results = []
    try:
        for shape in SHAPES if args.shape == "both" else (args.shape,):
            recipe = recipe_for(shape, root, args)
            t = time.perf_counter()
            (index,) = build_shards(recipe, progress=False).values()
            build_s = time.perf_counter() - t
            stream = DatasetStream(index)
            batch = args.batch or DEFAULT_BATCH[shape]
            n_batches = max(2, args.samples // batch)
            rows = [time_loader(stream, batch, w, args.device, n_batches,
                                min(args.shuffle_buffer, stream.train_count()), cache_mib=c)
                    for w in args.workers for c in args.cache_mib]
            stages = time_stages(stream, 64 if shape == "nsd" else 16, args.stage_reps)
            consume, consume_batch = model_rate(args.step_json, shape)
            for r in rows:
                r["ratio_to_model"] = None if consume is None else r["samples_per_s"] / consume
            results.append({"shape": shape, "build_s": build_s, "train_samples": stream.train_count(),
                            "shards": len(stream.index.shards("train")), "loader": rows, "stages": stages,
                            "model_samples_per_s": consume, "model_batch": consume_batch,
                            "loadavg": list(os.getloadavg())})
            print(f"  {shape}: {stream.train_count()} training samples in {results[-1]['shards']} shards "
                  f"(built in {build_s:.1f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return {"results": results, "peak_rss_mib": _perf.peak_rss_mib()}


def table(results: list[dict[str, Any]]) -> str:
    head = ("| shape | batch | workers | tar cache MiB | loader samples/s | first batch s | main-process CPU ms/batch "
            "| model samples/s | loader ÷ model | decode alone samples/s | collate alone samples/s "
            "| tar read alone samples/s | sample KiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        st = res["stages"]
        for r in res["loader"]:
            ratio = "–" if r["ratio_to_model"] is None else f"{r['ratio_to_model']:.1f}×"
            model = "–" if res["model_samples_per_s"] is None else f"{res['model_samples_per_s']:.2f}"
            lines.append(
                f"| {res['shape']} | {r['batch']} | {r['workers']} | {r.get('cache_mib', 0)} "
                f"| {r['samples_per_s']:.0f} "
                f"| {r['first_batch_s']:.2f} "
                f"| {1e3 * r['main_process_cpu_s_per_batch']:.1f} | {model} | {ratio} "
                f"| {st['decode_samples_per_s']:.0f} | {st['collate_samples_per_s']:.0f} "
                f"| {st['tar_read_samples_per_s']:.0f} | {st['sample_bytes'] / 1024:.1f} |")
    return "\n".join(lines)


def verdict(res: dict[str, Any]) -> str:
    """One line per shape: does the loader keep up (>= 10x), and which stage limits it."""
    best = max(res["loader"], key=lambda r: r["samples_per_s"])
    st = res["stages"]
    stages = {"tar reading": st["tar_read_samples_per_s"], "decode": st["decode_samples_per_s"],
              "collate": st["collate_samples_per_s"]}
    slowest = min(stages, key=stages.get)
    head = f"{res['shape']}: best loader {best['samples_per_s']:.0f} samples/s (num_workers={best['workers']})"
    if res["model_samples_per_s"] is None:
        return f"{head}; no model rate given (--step-json); slowest stage alone: {slowest} ({stages[slowest]:.0f}/s)"
    ratio = best["samples_per_s"] / res["model_samples_per_s"]
    ok = "meets" if ratio >= 10 else "MISSES"
    return (f"{head} = {ratio:.0f}× the model's {res['model_samples_per_s']:.2f} samples/s: {ok} the ≥ 10× goal; "
            f"slowest stage alone: {slowest} ({stages[slowest]:.0f} samples/s in one process)")


def cli_args(args: argparse.Namespace) -> list[str]:
    out = ["--shape", args.shape, "--workers", *map(str, args.workers), "--samples", str(args.samples),
           "--device", args.device, "--threads", str(args.threads), "--token-dim", str(args.token_dim),
           "--seconds", str(args.seconds), "--stimuli-per-subject", str(args.stimuli_per_subject),
           "--shuffle-buffer", str(args.shuffle_buffer), "--stage-reps", str(args.stage_reps),
           "--cache-mib", *map(str, args.cache_mib)]
    if args.batch:
        out += ["--batch", str(args.batch)]
    if args.step_json:
        out += ["--step-json", args.step_json]
    if args.keep:
        out += ["--keep", args.keep]
    if args.out:
        out += ["--out", args.out]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=[*SHAPES, "both"], default="both")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: nsd 64, hcp 4, as bench_step)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to time")
    p.add_argument("--cache-mib", type=int, nargs="+", default=[256],
                   help="train.shard_cache_mib values to time (256: what the trainer uses by default; 0: no tar cache)")
    p.add_argument("--samples", type=int, default=1024, help="samples timed per configuration (after the first batch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--token-dim", type=int, default=512)
    p.add_argument("--stimuli-per-subject", type=int, default=200, help="nsd: own stimuli per subject")
    p.add_argument("--seconds", type=int, default=64, help="hcp: volumes per subject")
    p.add_argument("--shuffle-buffer", type=int, default=256,
                   help="shuffle buffer (samples; capped at the training set): nsd.yaml has 5000, hcp.yaml 512")
    p.add_argument("--stage-reps", type=int, default=7)
    p.add_argument("--step-json", help="bench_step.py --out JSON: the model's samples/s to compare with")
    p.add_argument("--keep", help="build (or reuse) the shards here instead of a temporary folder")
    p.add_argument("--out", help="write the measurements as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = _perf.rerun("benchmarks/bench_data_path.py", cli_args(args))
    print(f"rerun: {command}", flush=True)
    import torch

    torch.set_num_threads(args.threads)
    info = _perf.machine(args.device)
    print(_perf.machine_line(info), flush=True)
    out = run(args)
    print()
    print(table(out["results"]))
    for res in out["results"]:
        print(verdict(res))
    print("\nloader samples/s: steady state after the first batch (DatasetStream.train_batches + Batch.to(device)); "
          "'alone' columns: one stage on in-memory samples, single process.")
    doc = {"benchmark": "data_path", "command": command, "machine": info, "loadavg_end": list(os.getloadavg()), **out}
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
