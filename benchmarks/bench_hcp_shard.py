"""Benchmark (not a test): the ``hcp`` plugin on an HCP-sized run — raw nibabel read speed vs. sharding
throughput and peak memory.

    .venv/bin/python benchmarks/bench_hcp_shard.py [--seconds 100] [--compresslevel 6] [--keep DIR]

What is generated (in a temporary folder, or ``--keep DIR`` to reuse it): one subject in the exact HCP
layout whose run is ``113×136×113 × --seconds`` float32 (the real grid; real runs have 901–921
volumes), written as ``.nii.gz`` at gzip level ``--compresslevel`` with the HCP MNI affine. Inside an
ellipsoid of ~446k voxels (the MNI152 brain mask's 228k voxels at 2 mm, scaled to 1.6 mm) the values
are ``10000 + N(0, 100)`` float32, outside exactly 0 — as in ``*_hp2000_clean.nii.gz``. White noise
compresses worse than real BOLD, so the file is, if anything, slower to decompress than real data.
The four movie runs the plugin needs are symlinks to that one file; ``WordNetFeatures.hdf5`` has 859
sparse random 0/1 categories; the clip segments cover every second with a volume 4 s later.

Each phase runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

* ``read-whole``   nibabel ``np.asarray(img.dataobj, float32)`` of the whole run (what a naive loader does);
* ``read-chunks``  nibabel ``img.dataobj[..., t0:t1]`` in the plugin's chunk size, ``keep_file_open=True``;
* ``plugin``       ``HCPMovieDataset.samples()`` over the subject's 4 runs (mask + read + normalise + float16);
* ``shard``        ``foundation.data.shards.build_shards`` end to end (tars, index.json) with a trivial guidance.

MB/s is uncompressed float32 MB of the run per second; "gz MB/s" is the compressed file size per second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = (113, 136, 113)
BRAIN_VOXELS = 446_000
N_CATEGORIES = 859


def _paths() -> None:
    sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("foundation_hcp") is None:
        sys.path.insert(0, str(REPO / "plugins"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- phases (subprocesses)


def generate(root: Path, seconds: int, level: int) -> dict:
    import h5py
    import nibabel as nib
    import numpy as np

    _paths()
    from tests.plugins.hcp_fixture import AFFINE, run_path

    nib.openers.Opener.default_compresslevel = level
    subject = "100610"
    first = run_path(root, subject, 1)
    first.parent.mkdir(parents=True, exist_ok=True)
    # an ellipsoid with ~BRAIN_VOXELS voxels, centred in the grid
    k = (BRAIN_VOXELS / (4 / 3 * np.pi * np.prod([g / 2 for g in GRID]))) ** (1 / 3)
    axes = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (k * n / 2) for n in GRID], indexing="ij")
    brain = sum(a ** 2 for a in axes) <= 1.0
    rng = np.random.default_rng(0)
    data = np.zeros((*GRID, seconds), dtype=np.float32, order="F")
    n_brain = int(brain.sum())
    for t in range(seconds):
        data[..., t][brain] = (10000 + 100 * rng.standard_normal(n_brain)).astype(np.float32)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_sform(AFFINE, code=4)
    img.header.set_qform(AFFINE, code=4)
    t0 = time.perf_counter()
    nib.save(img, str(first))
    write_s = time.perf_counter() - t0
    del data, img
    for m in (2, 3, 4):
        p = run_path(root, subject, m)
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            p.symlink_to(first)
    wn = root / "7T_movie_resources" / "WordNetFeatures.hdf5"
    wn.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(wn, "w") as fh:
        for code in ("MOVIE1_CC1", "MOVIE2_HO1", "MOVIE3_CC2", "MOVIE4_HO2"):
            fh.create_dataset(code, data=(rng.random((seconds, N_CATEGORIES)) < 0.03).astype(np.float32))
        fh.create_dataset("synsets", data=np.array([f"thing{k}.n.01".encode() for k in range(N_CATEGORIES)]))
    usable = seconds - 4  # the volume 4 s later must exist
    segs = {str(m): [[0, 24 * (usable - 10)], [24 * (usable - 10), 24 * usable]] for m in (1, 2, 3, 4)}
    (root / "segments.json").write_text(json.dumps({"fps": 24, "segments": segs}))
    return {"brain_voxels": n_brain, "gz_mb": first.stat().st_size / 1e6, "write_s": write_s}


def read_whole(root: Path) -> dict:
    import nibabel as nib
    import numpy as np

    _paths()
    from tests.plugins.hcp_fixture import run_path

    t0 = time.perf_counter()
    data = np.asarray(nib.load(str(run_path(root, "100610", 1))).dataobj, dtype=np.float32)
    return {"s": time.perf_counter() - t0, "raw_mb": data.nbytes / 1e6, "rss_mb": _rss_mb()}


def read_chunks(root: Path) -> dict:
    import nibabel as nib
    import numpy as np

    _paths()
    from foundation_hcp.volumes import _step

    from tests.plugins.hcp_fixture import run_path

    t0 = time.perf_counter()
    img = nib.load(str(run_path(root, "100610", 1)), keep_file_open=True)
    n_t, step, total = img.shape[3], _step(GRID), 0
    for a in range(0, n_t, step):
        total += np.asarray(img.dataobj[..., a:min(a + step, n_t)], dtype=np.float32).nbytes
    return {"s": time.perf_counter() - t0, "raw_mb": total / 1e6, "chunk_volumes": step, "rss_mb": _rss_mb()}


def plugin(root: Path) -> dict:
    import numpy as np  # noqa: F401

    _paths()
    from foundation_hcp import HCPMovieDataset, HCPOptions

    from foundation.core.recipe import from_dict

    base = _rss_mb()
    ds = HCPMovieDataset(from_dict(HCPOptions, {"segments": "segments.json", "val_seconds": 30, "val_gap": 0,
                                                "label_threshold": 0.0}), root=root)
    t0 = time.perf_counter()
    info = ds.info()
    t_mask = time.perf_counter()
    voxels = int(ds.mask("100610").sum())
    t1 = time.perf_counter()
    n = sum(1 for _ in ds.samples("100610"))
    t2 = time.perf_counter()
    return {"samples": n, "s": t2 - t0, "info_s": t_mask - t0, "mask_s": t1 - t_mask, "samples_s": t2 - t1,
            "voxels": voxels, "grid": list(info.grid), "rss_mb": _rss_mb(), "base_rss_mb": base}


def shard(root: Path) -> dict:
    _paths()
    import types

    import numpy as np

    from foundation.core import plugins
    from foundation.core.api import GuidanceFeatures, GuidancePlugin
    from foundation.core.config import Recipe
    from foundation.data.shards import build_shards
    from foundation.core.hookspecs import hookimpl
    from foundation.core.recipe import from_dict

    class Zeros(GuidancePlugin):
        name = "bench-zeros"
        batch_size = 4096

        def encode(self, stimuli):
            return GuidanceFeatures(low=np.zeros((len(stimuli), 8), np.float32),
                                    high=np.zeros((len(stimuli), 8), np.float32))

    module = types.ModuleType("bench_hcp_guidance")

    def foundation_guidance_plugins():
        return [Zeros]

    module.foundation_guidance_plugins = hookimpl(foundation_guidance_plugins)
    sys.modules[module.__name__] = module
    plugins.register_module("foundation_hcp.plugin")
    plugins.register_module(module.__name__)
    recipe = from_dict(Recipe, {
        "datasets": [{"plugin": "hcp", "root": str(root),
                      "options": {"segments": "segments.json", "val_seconds": 30, "val_gap": 0,
                                  "label_threshold": 0.0}}],
        "guidance": {"low": "bench-zeros", "high": "bench-zeros"},
        "shards": {"root": str(root / "_shards"), "samples_per_shard": 256},
    })
    base = _rss_mb()
    t0 = time.perf_counter()
    index = build_shards(recipe, progress=False)["hcp"]
    s = time.perf_counter() - t0
    n = sum(sum(v.values()) for v in index.data["counts"].values())
    size = sum(p.stat().st_size for p in (root / "_shards").rglob("*.tar")) / 1e6
    return {"samples": n, "s": s, "tar_mb": size, "rss_mb": _rss_mb(), "base_rss_mb": base}


PHASES = {"read-whole": read_whole, "read-chunks": read_chunks, "plugin": plugin, "shard": shard}


def _child(phase: str, root: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--root", str(root), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=100, help="volumes of the generated run (real: ~900)")
    parser.add_argument("--compresslevel", type=int, default=6, help="gzip level of the generated .nii.gz")
    parser.add_argument("--keep", type=Path, help="generate into / reuse this folder instead of a temporary one")
    parser.add_argument("--phase", choices=["generate", *PHASES], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "generate":
        print(json.dumps(generate(args.root, args.seconds, args.compresslevel)))
        return 0
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.root)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-hcp-") as tmp:
        root = args.keep or Path(tmp)
        marker = root / "generated.json"
        if marker.is_file():
            gen = json.loads(marker.read_text())
        else:
            root.mkdir(parents=True, exist_ok=True)
            gen = _child("generate", root, "--seconds", str(args.seconds), "--compresslevel", str(args.compresslevel))
            gen["seconds"] = args.seconds
            marker.write_text(json.dumps(gen))
        res = {p: _child(p, root) for p in PHASES}
        if (root / "_shards").exists():
            import shutil

            shutil.rmtree(root / "_shards")
    n_vol = gen["seconds"]
    raw_mb = res["read-whole"]["raw_mb"]
    print(f"HCP shard benchmark: one {'x'.join(map(str, GRID))} x {n_vol} float32 run, {gen['gz_mb']:.0f} MB .nii.gz "
          f"(gzip level {args.compresslevel}), {raw_mb:.0f} MB raw, {gen['brain_voxels']:,} in-brain voxels; "
          f"the plugin reads it as 4 runs (symlinks), crop 2:,4:-5,:-2, min-max, mask 'nonzero'")
    rows = [("phase", "seconds", "throughput", "max RSS")]
    for name in ("read-whole", "read-chunks"):
        r = res[name]
        speed = (f"{r['raw_mb'] / r['s']:.0f} MB/s raw, {gen['gz_mb'] / r['s']:.0f} gz MB/s, "
                 f"{n_vol / r['s']:.0f} volumes/s")
        rows.append((f"nibabel {name}", f"{r['s']:.1f}", speed, f"{r['rss_mb']:.0f} MB"))
    p = res["plugin"]
    speed = f"{p['samples'] / p['s']:.0f} samples/s, {4 * n_vol / p['s']:.0f} volumes/s (mask {p['mask_s']:.1f} s)"
    rows.append(("plugin samples() 4 runs", f"{p['s']:.1f}", speed,
                 f"{p['rss_mb']:.0f} MB (imports {p['base_rss_mb']:.0f})"))
    s = res["shard"]
    speed = f"{s['samples'] / s['s']:.0f} samples/s, {s['tar_mb']:.0f} MB of tars"
    rows.append(("build_shards end to end", f"{s['s']:.1f}", speed,
                 f"{s['rss_mb']:.0f} MB (imports {s['base_rss_mb']:.0f})"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    per_volume = s["s"] / (4 * n_vol)
    print(f"in-mask voxels per sample: {p['voxels']:,} on the {p['grid']} cropped grid; "
          f"extrapolated to real data (4 runs x ~914 volumes per subject, 9 subjects): "
          f"~{per_volume * 4 * 914 / 60:.1f} min per subject, ~{per_volume * 4 * 914 * 9 / 3600:.1f} h for 9 subjects "
          f"on this machine, one core")
    print("rerun: .venv/bin/python benchmarks/bench_hcp_shard.py "
          f"--seconds {n_vol} --compresslevel {args.compresslevel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
