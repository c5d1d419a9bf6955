"""The per-subject alignment's forward at volume and ROI sizes (a benchmark, not a test).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_alignment.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_alignment.py --features 129024 --subjects 3 --batch 64

Times :meth:`foundation.model.alignment.SubjectAlignment.forward` (one matmul per subject in the batch)
against the formula it replaced in stop 21, a per-*sample* gather of each sample's ``(F, 2k)`` map
followed by a ``bmm`` (``B × F × 2k`` floats copied every step), on the same random maps and inputs,
interleaved round by round; prints the median times and the largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from foundation.model.alignment import SubjectAlignment


def _gather_bmm(m: SubjectAlignment, flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The replaced formula: ``(B, F) -> (B, 2k)`` through a per-sample gather of the maps."""
    weight, mean = m.weight[idx], m.mean[idx]  # (B, F, 2k), (B, F)
    return torch.bmm((flat - mean).unsqueeze(1), weight).squeeze(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, nargs="+", default=[129024, 512],
                   help="input values per sample (129024: hcp_planted's 48×56×48 grid; 512: 8 ROI tokens × 64)")
    p.add_argument("--subjects", type=int, default=3, help="subjects with a map (hcp_planted: 3)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=32, help="model.alignment_dim (2·dim outputs)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    for features in args.features:
        m = SubjectAlignment(args.subjects, features, guidance_dims=[args.dim, args.dim], dim=args.dim)
        m.weight.normal_()
        m.mean.normal_()
        m.fitted.fill_(True)
        x = torch.randn(args.batch, features)
        idx = torch.randint(0, args.subjects, (args.batch,))
        times: dict[str, list[float]] = {"per-subject matmul": [], "per-sample gather + bmm": []}
        with torch.no_grad():
            for _ in range(args.rounds):
                t = time.perf_counter()
                new = m(x, idx).flatten(1)
                times["per-subject matmul"].append(time.perf_counter() - t)
                t = time.perf_counter()
                old = _gather_bmm(m, x, idx)
                times["per-sample gather + bmm"].append(time.perf_counter() - t)
        rel = float((new - old).abs().max() / old.abs().max())
        print(f"F={features} subjects={args.subjects} batch={args.batch} 2k={2 * args.dim} "
              f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
        for name, ts in times.items():
            print(f"  {name:24s} median {statistics.median(ts) * 1e3:8.2f} ms")
        print(f"  largest |difference| / largest |output|: {rel:.1e}")
    print("rerun: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_alignment.py")


if __name__ == "__main__":
    main()
