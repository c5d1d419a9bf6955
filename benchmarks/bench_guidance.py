"""Guidance encoding throughput: stimuli/s per built-in guidance plugin at realistic sizes (not a test).

    python benchmarks/bench_guidance.py                      # all plugins, ~3 minutes on 2 CPU cores
    python benchmarks/bench_guidance.py --plugins clip vit --seconds 30 --image-size 425 --device cuda

Each plugin runs its real architecture: CLIP ViT-B-32 (open_clip), ViT-B/16 (timm
vit_base_patch16_224), AlexNet (torchvision) and all-MiniLM-L6-v2.  Weights come from the local caches
when they are there; otherwise the network is randomly initialised (``allow_random_weights``), which
costs exactly the same time per stimulus — the ``weights`` column says which was measured.

Stimuli are random ``(S, S, 3) uint8`` images (``--image-size``, default 224; NSD images are 425) with
``--captions`` captions each (default 5, as NSD: the clip plugins encode all five to choose one) or one
text.  Timing covers what a shard build pays per stimulus: preprocessing (the model's own
transforms), the forward passes, and post-processing; building the network is reported separately.
One warm-up batch is not timed; then whole batches are encoded until ``--seconds`` have passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

try:
    import foundation_vision  # noqa: F401
except ImportError:  # an editable install made before the package existed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from foundation_vision.plugin import GUIDANCE_PLUGINS

from foundation.core.api import Stimulus
from foundation.core.recipe import from_dict

#: plugin name → options (the real architectures)
CONFIGS = {
    "clip": {"model": "ViT-B-32", "pretrained": "openai"},
    "clip-image": {"model": "ViT-B-32", "pretrained": "openai"},
    "vit": {"model": "vit_base_patch16_224"},
    "alexnet": {},
    "minilm": {},
}
NETWORK = {"clip": "open_clip ViT-B-32 (image+text)", "clip-image": "open_clip ViT-B-32 (image)",
           "vit": "timm vit_base_patch16_224", "alexnet": "torchvision alexnet", "minilm": "all-MiniLM-L6-v2"}

WORDS = ["a", "man", "riding", "a", "bike", "down", "a", "busy", "street", "next", "to", "parked", "cars", "and", "a", "red", "bus", "on", "a", "sunny", "day", "in", "the", "city", "while", "people", "walk", "by", "with", "dogs", "and", "bags"]


def make_stimuli(n: int, size: int, captions: int, seed: int = 0) -> list[Stimulus]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        caps = [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 16)))) for _ in range(max(captions, 1))]
        extras = {"captions": np.array(caps)} if captions > 1 else {}
        out.append(Stimulus(id=f"stim-{i:05d}", image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                            text=caps[0], extras=extras))
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def bench(name: str, args: argparse.Namespace, device: str) -> dict:
    cls = {c.name: c for c in GUIDANCE_PLUGINS}[name]
    options = dict(CONFIGS[name])
    if args.batch_size:
        options["batch_size"] = args.batch_size
    g = cls(from_dict(cls.Options, options), device=device, allow_random_weights=True)
    t0 = time.perf_counter()
    try:
        g.network()
    except Exception as exc:  # noqa: BLE001 - e.g. minilm without its package: a row saying so
        return {"plugin": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    build = time.perf_counter() - t0
    batch = g.batch_size
    pool = make_stimuli(batch * 2, args.image_size, args.captions)
    g.encode(pool[:batch])  # warm-up
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while True:
        feats = g.encode(pool[(n // batch) % 2 * batch:][:batch])
        n += batch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed >= args.seconds and n >= 2 * batch:
            break
    prov = g.provenance()
    return {"plugin": name, "network": NETWORK[name], "weights": "random" if prov["random_weights"] else "file",
            "device": device, "batch": batch, "stimuli": n, "seconds": round(elapsed, 2),
            "stimuli_per_s": round(n / elapsed, 1), "build_s": round(build, 1),
            "dims": f"{feats.low.shape[1]}/{feats.high.shape[1]}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plugins", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seconds", type=float, default=10.0, help="timed encoding per plugin (at least 2 whole batches)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--captions", type=int, default=5, help="captions per stimulus (1: a single text)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="stimuli per encode call (0: each plugin's default, 64 images / 128 texts; small by "
                        "default so the slow CPU rows finish quickly — the rate barely depends on it on CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = p.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    print(f"# guidance throughput on {device} ({where}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, images {args.image_size}x{args.image_size}, "
          f"{args.captions} caption(s)/stimulus, load average {os.getloadavg()[0]:.1f} at start "
          f"(other processes on a shared CPU slow every row)", flush=True)
    rows = []
    for name in args.plugins:
        row = bench(name, args, device)
        rows.append(row)
        print(f"  {name}: {row.get('stimuli_per_s', row.get('error'))}", file=sys.stderr, flush=True)
    cols = ["plugin", "network", "weights", "device", "batch", "stimuli", "seconds", "stimuli_per_s", "build_s", "dims"]
    table = [cols] + [[str(r.get(c, "")) if "error" not in r else (r["plugin"] if c == "plugin" else
                       (r["error"] if c == "network" else "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(table[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print("\nrerun: python benchmarks/bench_guidance.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
