"""Benchmark (not a test): NSD shard building vs the raw nibabel read of the same betas file.

Generates one NSD-sized session in the real layout (750 trials on an ~80×100×80 grid, int16
``betas_session01.nii.gz``, a Kastner2015 ROI volume with contiguous labels in the posterior brain)
under a temporary folder, then measures, each in a fresh subprocess so that peak memory is its own:

1. ``read``   raw nibabel read of the betas file: ``np.asarray(nib.load(path).dataobj)``;
2. ``plugin`` the ``nsd`` plugin alone: ``info()``, every sample of the subject, ``artifacts()``;
3. ``shard``  ``foundation.data.shards.build_shards`` end to end (plugin + a trivial image guidance +
   tar writing + index.json).

Run from the repository root::

    .venv/bin/python benchmarks/bench_nsd_shard.py                 # NIfTI, 750 × 80×100×80
    .venv/bin/python benchmarks/bench_nsd_shard.py --formats nifti hdf5 --trials 750 --grid 80 100 80
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss would carry the parent's peak across fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _val(root: Path) -> int:
    """Validation samples: ~7% of the session (50 of 750), as NSD's 1000 of ~9000 non-shared images per subject."""
    return int(json.loads((root / "bench.json").read_text())["trials"]) // 15


def _register() -> None:
    """Make the nsd plugin and a trivial guidance available even before pyproject names them."""
    import importlib.util
    import types

    import numpy as np

    from foundation.core import plugins
    from foundation.core.api import GuidanceFeatures, GuidancePlugin
    from foundation.core.hookspecs import hookimpl

    if importlib.util.find_spec("foundation_nsd") is None:
        sys.path.insert(0, str(REPO / "plugins"))

    class MeanColour(GuidancePlugin):
        name = "bench-mean-colour"
        needs = ("image",)
        batch_size = 256

        def encode(self, stimuli):
            low = np.stack([s.image.reshape(-1, 3).mean(0) for s in stimuli]).astype(np.float32)
            return GuidanceFeatures(low=low, high=low[:, :1].copy())

    def foundation_guidance_plugins():
        return [MeanColour]

    module = types.ModuleType("bench_nsd_guidance")
    module.foundation_guidance_plugins = hookimpl(foundation_guidance_plugins)
    sys.modules["bench_nsd_guidance"] = module
    if "nsd" not in plugins.dataset_plugins():
        plugins.register_module("foundation_nsd.plugin")
    plugins.register_module("bench_nsd_guidance")


def child(mode: str, root: Path, fmt: str, work: Path) -> dict:
    """One measurement; returns a JSON-able dict."""
    import numpy as np

    if mode == "read":
        import nibabel as nib

        folder = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
        path = folder / ("betas_session01.nii.gz" if fmt == "nifti" else "betas_session01.hdf5")
        base = _rss_mb()
        t0 = time.perf_counter()
        if fmt == "nifti":
            data = np.asarray(nib.load(str(path)).dataobj)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                data = f["betas"][()]
        secs = time.perf_counter() - t0
        return {"seconds": secs, "raw_mb": data.nbytes / 2**20, "file_mb": path.stat().st_size / 2**20,
                "trials": int(data.shape[-1] if fmt == "nifti" else data.shape[0]), "rss_before_mb": base,
                "peak_mb": _peak_mb()}

    from threadpoolctl import threadpool_limits

    _register()
    if mode == "plugin":
        from foundation_nsd.layout import preprocess, read_betas
        from foundation_nsd.pca import CovAccumulator, fit_basis
        from foundation_nsd.plugin import NSDDataset, NSDOptions

        ds = NSDDataset(NSDOptions(betas_format=fmt, val_samples=_val(root)), root=root, seed=0)
        base = _rss_mb()
        out: dict = {"rss_before_mb": base}
        with threadpool_limits(limits=1, user_api="blas"):  # as build_shards runs plugins
            t0 = time.perf_counter()
            info = ds.info()
            t1 = time.perf_counter()
            ds.fit_pca("subj01")  # reads the session once, accumulates, one SVD per group
            t2 = time.perf_counter()
            n = sum(1 for _ in ds.samples("subj01"))  # projection pass (one session: reuses the fit pass read)
            t3 = time.perf_counter()
            ds.artifacts(work / "artifacts")
            t4 = time.perf_counter()
            out.update(seconds=t4 - t0, info_seconds=t1 - t0, fit_seconds=t2 - t1, project_seconds=t3 - t2,
                       artifacts_seconds=t4 - t3, samples=n, peak_mb=_peak_mb(), token_shape=list(info.token_shape),
                       voxels=info.extra["voxels"]["subj01"])
            # one more read of the session's ROI voxels alone (what every further session costs per pass)
            sub = ds.state().subjects["subj01"]
            t0 = time.perf_counter()
            data = preprocess(read_betas(sub.sessions[0], sub.rois.voxels, fmt), zscore=True, where="bench")
            out["read_seconds"] = time.perf_counter() - t0
            out["roi_voxels"] = int(data.shape[1])
            # the two PCA paths, all groups: kept rows + SVD (this 1-session run), and what a real subject
            # with ~8000 training trials (> 2 x voxels) does: fold each session into a scatter matrix, then eigh
            train = data[np.flatnonzero(sub.splits[: data.shape[0]] == "train")]
            t0 = time.perf_counter()
            for g, cols in sub.rois.positions.items():
                acc = CovAccumulator(len(cols))
                acc.add(train[:, cols])
                fit_basis(acc, info.token_shape[1])
            out["svd_seconds"] = time.perf_counter() - t0
            accs, add = {}, 0.0
            for g, cols in sub.rois.positions.items():
                accs[g] = CovAccumulator(len(cols))
                accs[g].add(train[:2, cols])
                accs[g]._fold()
                t0 = time.perf_counter()
                accs[g].add(train[2:, cols])
                add += time.perf_counter() - t0
            t0 = time.perf_counter()
            for acc in accs.values():
                fit_basis(acc, 268)
            out.update(scatter_add_seconds=add, eigh_seconds=time.perf_counter() - t0)
        return out

    from foundation.core.config import Recipe
    from foundation.data.shards import build_shards
    from foundation.core.recipe import from_dict

    recipe = from_dict(Recipe, {
        "name": "bench-nsd", "seed": 0,
        "datasets": [{"plugin": "nsd", "name": "nsd", "root": str(root),
                      "options": {"betas_format": fmt, "val_samples": _val(root)}}],
        "guidance": {"low": "bench-mean-colour", "high": "bench-mean-colour"},
        "shards": {"root": str(work / "shards"), "samples_per_shard": 1000},
    })
    base = _rss_mb()
    t0 = time.perf_counter()
    (index,) = build_shards(recipe, progress=False).values()
    secs = time.perf_counter() - t0
    n = sum(sum(v.values()) for v in index.data["counts"].values())
    return {"seconds": secs, "samples": n, "rss_before_mb": base, "peak_mb": _peak_mb()}


def _run_child(mode: str, root: Path, fmt: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--_child", mode, "--_root", str(root), "--_format", fmt, "--_work", str(work)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} ({fmt}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=750)
    p.add_argument("--grid", type=int, nargs=3, default=(80, 100, 80))
    p.add_argument("--formats", nargs="+", choices=("nifti", "hdf5"), default=["nifti"])
    p.add_argument("--tmp", type=Path, default=None, help="where to generate (default: a fresh temp dir, removed)")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_format", help=argparse.SUPPRESS)
    p.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print(json.dumps(child(a._child, a._root, a._format, a._work)))
        return 0

    sys.path.insert(0, str(REPO))
    from tests.plugins.nsd_fixture import write_nsd_fixture

    tmp = Path(tempfile.mkdtemp(prefix="bench-nsd-", dir=a.tmp))
    try:
        t0 = time.perf_counter()
        fmt_arg = a.formats[0] if len(a.formats) == 1 else "both"
        write_nsd_fixture(tmp / "NSD", n_subjects=1, sessions=(1,), trials_per_session=a.trials, grid=tuple(a.grid),
                          n_shared=max(4, a.trials // 15), betas_format=fmt_arg, roi_layout="blobs", encode_ids=False)
        gen = time.perf_counter() - t0
        (tmp / "NSD" / "bench.json").write_text(json.dumps({"trials": a.trials}))
        rows = []
        for fmt in a.formats:
            read = _run_child("read", tmp / "NSD", fmt, tmp)
            plug = _run_child("plugin", tmp / "NSD", fmt, tmp / f"work-plugin-{fmt}")
            shard = _run_child("shard", tmp / "NSD", fmt, tmp / f"work-shard-{fmt}")
            rows.append((fmt, read, plug, shard))
        grid = "×".join(map(str, a.grid))
        print(f"\nNSD shard benchmark: 1 subject, 1 session of {a.trials} trials on a {grid} int16 grid "
              f"(generated in {gen:.0f} s); {os.cpu_count()} CPUs, BLAS 1 thread; peak RSS = VmHWM of a fresh process "
              f"(~{rows[0][2]['rss_before_mb']:.0f} MB before the plugin starts, ~{rows[0][1]['rss_before_mb']:.0f} MB "
              f"for the read)")
        for fmt, read, plug, shard in rows:
            t = plug["samples"]
            print(f"\n[{fmt}] betas file {read['file_mb']:.0f} MB on disk, {read['raw_mb']:.0f} MB decoded; ROI voxels "
                  f"{plug['roi_voxels']} in groups {plug['voxels']} → tokens {tuple(plug['token_shape'])}")
            print(f"  {'step':<62} {'seconds':>8}  {'throughput':<26} {'peak RSS':>9}")
            raw = "raw nibabel read, whole file (np.asarray(dataobj))" if fmt == "nifti" else \
                "raw h5py read, whole file (f['betas'][()])"
            print(f"  {raw:<62} {read['seconds']:8.2f}  {read['raw_mb'] / read['seconds']:5.0f} MB/s, "
                  f"{read['trials'] / read['seconds']:5.0f} trials/s   {read['peak_mb']:6.0f} MB")
            print(f"  {'nsd read of the ROI voxels + scale + z-score (1 session)':<62} {plug['read_seconds']:8.2f}  "
                  f"{read['raw_mb'] / plug['read_seconds']:5.0f} MB/s, {t / plug['read_seconds']:5.0f} trials/s")
            for key, label in (("info_seconds", "nsd info() (headers, ROI files, design, categories)"),
                               ("fit_seconds", "nsd PCA fit pass (read + accumulate + SVD per group)"),
                               ("project_seconds", "nsd projection pass (samples; reuses the fit read)"),
                               ("artifacts_seconds", "nsd artifacts() (bases .npz)")):
                print(f"  {label:<62} {plug[key]:8.2f}")
                if key == "fit_seconds":
                    print(f"  {'  of which PCA solve (kept rows + SVD, all groups)':<62} {plug['svd_seconds']:8.2f}")
            print(f"  {'nsd plugin total: info + all samples + bases':<62} {plug['seconds']:8.2f}  "
                  f"{t / plug['seconds']:6.0f} samples/s{'':<10} {plug['peak_mb']:6.0f} MB")
            print(f"  {'build_shards end to end (plugin + guidance + tars + index)':<62} {shard['seconds']:8.2f}  "
                  f"{shard['samples'] / shard['seconds']:6.0f} samples/s{'':<10} {shard['peak_mb']:6.0f} MB")
            per_session = 2 * plug["read_seconds"] + plug["scatter_add_seconds"] + plug["project_seconds"]
            print(f"  {'real subject, per session: 2 reads + scatter update + project':<62} {per_session:8.2f}  "
                  f"{t / per_session:6.0f} samples/s   (scatter update {plug['scatter_add_seconds']:.2f} s)")
            print(f"  {'real subject, once: eigh of every group down to 268':<62} {plug['eigh_seconds']:8.2f}")
        cmd = f".venv/bin/python benchmarks/bench_nsd_shard.py --trials {a.trials} --grid {' '.join(map(str, a.grid))} " \
              f"--formats {' '.join(a.formats)}"
        print(f"\nrerun: {cmd}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
