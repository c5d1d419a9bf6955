"""Regenerate ``docs/results/``: the paper's tables and figures on the synthetic worlds (a benchmark).

    .venv/bin/python benchmarks/paper_results.py                 # ~5 h wall on 2 CPU cores (2 × 1 thread), reuses finished runs
    .venv/bin/python benchmarks/paper_results.py --jobs 4 --runs /scratch/bench

Twelve ``foundation bench`` invocations (runs whose ``metrics.json`` exists are reused, so an
interrupted call resumes by rerunning it) and the figures of ``foundation plot``:

1. ``recipes/synthetic.yaml`` (ROI world, NSD-like: 10 subjects, mostly disjoint stimuli): CLIP-MUSED,
   the single- and multi-subject baselines (Tables 1/2), the mapping loss (Table B4) and the loss
   ablations (Table 3), 3 seeds; CLIP-SS-ViT (Table D5) beside CLIP-MUSED and SS-ViT on
   seed 0 only (another 30 single-subject runs per seed);
   the guidance networks (Table E6): CLIP-MUSED guided by MiniLM embeddings of the captions and by a
   randomly initialised CLIP on the rendered images, 3 seeds;
2. ``recipes/synthetic_volume.yaml`` (volume world, HCP-like: 6 subjects, one shared movie, 3-D CNN
   patchifier): CLIP-MUSED, SRM (needs the shared stimuli), the pooled / identity-token baselines,
   SS-CNN, the per-subject linear read-outs and the aligned rows (issues 13/14), 3 seeds;
3. ``recipes/synthetic_volume.yaml`` again with early stopping on a fine validation grid for every trained
   row (RESULTS.md §4d): the aligned model with the paper's MLP head and with a linear head, SS-CNN,
   the paper-exact model, the per-subject and the pooled aligned ridge read-outs, 3 seeds; then the
   aligned rows and the ridge read-outs on two worlds that no choice was made on
   (``datasets.0.options.world_seed`` 1 and 2: the replication check of §4d), 3 seeds; SRM against the
   per-subject ridge on those two worlds (recipe defaults), 3 seeds; and the ROI world's
   main rows on ``world_seed`` 1 (the replication check of §1), 3 seeds; and the unaligned volume networks,
   SS-CNN included, with a linear label head under that protocol beside the per-subject, grid and aligned
   ridge read-outs (RESULTS.md §4l), 3 seeds;
4. figures of seed 0's CLIP-MUSED run of each (training curves, readout-token attention over ROIs /
   on the MNI template, between-subject token RSMs) and, for the ROI world, its per-subject mAP against
   seed 0's SS-ViT models (Fig. C5/C6).

Every finished run's ``metrics.json`` and recipe also go to ``docs/results/archive`` (committed, a few KB per
run): on a machine with a clean ``runs/``, unchanged runs are restored from it instead of retrained, so a
regeneration can span sessions (``foundation bench --archive``). Figures need the full run of seed 0's
CLIP-MUSED and are kept as they are when that run was restored.

Writes ``docs/results/<table>.md`` (the tables as ``foundation bench`` prints them) and
``docs/results/figures/<recipe>/*.png``; ``docs/RESULTS.md`` quotes and discusses them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (table name, recipe, methods, seeds); CLIP-SS-ViT (30 more single-subject runs for 3 seeds) gets seed 0 only
PLAN = (
    ("synthetic", "recipes/synthetic.yaml",
     ("clip-mused", "ms-smodel-vit", "ms-smodel-mlp", "ms-emb", "no-orth", "no-low", "no-high", "no-rsa", "mapping",
      "ss-vit", "ss-mlp", "ridge", "logistic", "aligned-ridge", "aligned-clip-mused", "aligned-enc-clip-mused",
      "aligned-mlp"), 3),
    ("synthetic_clip_ss_vit", "recipes/synthetic.yaml", ("clip-mused", "ss-vit", "clip-ss-vit"), 1),
    ("synthetic_guidance", "recipes/synthetic.yaml", ("clip-mused", "guidance:minilm"), 3),
    ("synthetic_volume", "recipes/synthetic_volume.yaml", ("clip-mused", "srm", "ms-smodel-vit", "ms-smodel-mlp",
                                                          "ms-emb", "ss-mlp", "ridge", "logistic", "aligned-ridge",
                                                          "aligned-clip-mused",
                                                          "aligned-enc-clip-mused", "aligned-mlp"), 3),
)
#: tables whose overrides change every run: (table, recipe, methods, seeds, overrides, reference row, suffix
#: of --runs and name of their archive) — their own run directories. RESULTS.md §3: CLIP-MUSED guided by a
#: randomly initialised CLIP on the rendered images; §4d: the volume world with a fine validation grid (early
#: stopping) for every trained row, and the aligned model with a linear head beside the paper's; then that table's
#: aligned and ridge rows on two other worlds of the same generator (the replication check of §4d), SRM against
#: the per-subject ridge on those two worlds (§4d's room above ridge), and the ROI world's main rows on another
#: world (§1's); and §4l: the unaligned volume networks, SS-CNN included, with a linear label head under §4d's
#: protocol
OVERRIDDEN = (
    ("synthetic_random_clip", "recipes/synthetic.yaml", ("clip-mused",), 3,
     ("guidance.low=clip", "guidance.high=clip", "guidance.allow_random_weights=true",
      "guidance.options.clip.pretrained=random"), "clip-mused", "-random-clip"),
    ("synthetic_volume_early", "recipes/synthetic_volume.yaml",
     ("aligned-lin-clip-mused", "aligned-clip-mused", "ridge", "aligned-ridge", "grid-ridge", "ss-mlp", "clip-mused",
      "spatial-clip-mused"), 3,
     ("train.lr=3e-4", "train.steps=800", "train.eval_every=50", "train.checkpoint_every=50"), "ridge",
     "-volume-early"),
    *(
        (f"synthetic_volume_early_world{w}", "recipes/synthetic_volume.yaml",
         ("aligned-lin-clip-mused", "aligned-clip-mused", "ridge", "aligned-ridge"), 3,
         (f"datasets.0.options.world_seed={w}", "train.lr=3e-4", "train.steps=800", "train.eval_every=50",
          "train.checkpoint_every=50"), "ridge", f"-volume-early-world{w}")
        for w in (1, 2)
    ),
    *(
        (f"synthetic_volume_srm_world{w}", "recipes/synthetic_volume.yaml", ("ridge", "srm"), 3,
         (f"datasets.0.options.world_seed={w}",), "ridge", f"-volume-srm-world{w}")
        for w in (1, 2)
    ),
    ("synthetic_world1", "recipes/synthetic.yaml",
     ("clip-mused", "ms-emb", "ss-mlp", "ridge", "aligned-ridge", "aligned-clip-mused"), 3,
     ("datasets.0.options.world_seed=1",), "ridge", "-world1"),
    ("synthetic_volume_linear_head", "recipes/synthetic_volume.yaml",
     ("ridge", "grid-ridge", "aligned-ridge", "clip-mused", "spatial-clip-mused", "voxel-clip-mused", "ss-mlp"), 3,
     ("train.lr=3e-4", "train.steps=800", "train.eval_every=50", "train.checkpoint_every=50", "model.head=linear"),
     "ridge", "-volume-linear-head"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/bench", help="where the runs go (default runs/bench)")
    p.add_argument("--out", default="docs/results", help="where tables and figures go (default docs/results)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--seeds", type=int, default=3, help="at most this many seeds per table (default 3)")
    p.add_argument("--archive", default="docs/results/archive",
                   help="bench archive: each finished run's metrics.json + recipe, restored into a clean --runs when "
                        "the recipe is unchanged, so a regeneration resumes on another machine (default "
                        "docs/results/archive; committed)")
    args = p.parse_args(argv)
    os.chdir(REPO)  # recipes and the default --runs / --out are relative to the repository

    import matplotlib

    matplotlib.use("Agg")
    from foundation.workflows.bench_archive import is_restored
    from foundation.workflows.compare import bench
    from foundation.workflows.figures import plot_run

    t0 = time.perf_counter()
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, recipe, methods, seeds in PLAN:
        seeds = min(seeds, args.seeds)
        table = bench(recipe, methods=methods, seeds=seeds, out=args.runs, jobs=args.jobs, archive=args.archive)
        shutil.copyfile(table, out / f"{name}.md")
        stem = Path(recipe).stem
        if name != stem:
            continue  # the same runs as the main table of this recipe: no new figures
        runs = Path(args.runs) / stem
        if is_restored(runs / "clip-mused-seed0"):
            print(f"{out / 'figures' / stem}: kept (clip-mused-seed0 was restored from {args.archive}: metrics only; "
                  f"delete {runs / 'clip-mused-seed0'} and rerun to redraw)")
            continue
        singles = sorted(runs.glob("ss-vit-seed0-*")) if "ss-vit" in methods else None
        figures = out / "figures" / stem
        shutil.rmtree(figures, ignore_errors=True)
        for path in plot_run(runs / "clip-mused-seed0", out=figures, compare=singles or None):
            print(path)
    for name, recipe, methods, seeds, overrides, reference, suffix in OVERRIDDEN:
        table = bench(recipe, methods=methods, seeds=min(seeds, args.seeds), out=args.runs + suffix,
                      jobs=args.jobs, overrides=overrides, reference=reference,
                      archive=f"{args.archive}/{suffix.lstrip('-')}")
        shutil.copyfile(table, out / f"{name}.md")
    print(f"paper_results: {(time.perf_counter() - t0) / 60:.1f} min wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
