"""What DDP's per-step buffer broadcast costs an aligned volume model (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_ddp_buffers.py
    .venv/bin/python benchmarks/bench_ddp_buffers.py --features 129024 --subjects 3 --steps 10

Two processes on this machine (gloo, CPU), each holding a :class:`~foundation.model.alignment.SubjectAlignment`
with random fitted maps ``(S, F, 2k)`` feeding a small trainable layer, wrapped in
``DistributedDataParallel`` with ``broadcast_buffers`` on (torch's default: rank 0's buffers are sent to every
rank before each forward) and off (what ``foundation.engine.trainer`` asks Accelerate for: the maps are fitted on
every rank from the same samples, and the trainer broadcasts rank 0's once after ``prepare()``).  Rounds alternate the two; prints
the median step time of each on rank 0 and the buffer bytes per step.  On GPUs the same traffic goes over
NVLink/PCIe (not measured here: no GPU lent).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, args: argparse.Namespace, port: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from foundation.model.alignment import SubjectAlignment

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.align = SubjectAlignment(args.subjects, args.features, guidance_dims=[args.dim, args.dim],
                                          dim=args.dim, ragged=True)
            self.align.weight.normal_()
            self.align.fitted.fill_(True)
            self.head = torch.nn.Linear(2 * args.dim, 8)

        def forward(self, x, idx):
            return self.head(self.align(x, idx).flatten(1))

    import warnings

    with warnings.catch_warnings():  # torch 2.14 renames it forward_sync_buffers; Accelerate passes broadcast_buffers
        warnings.simplefilter("ignore", FutureWarning)
        models = {b: DDP(Model(), broadcast_buffers=b) for b in (True, False)}
    opts = {b: torch.optim.SGD(m.parameters(), lr=1e-3) for b, m in models.items()}
    x = torch.randn(args.batch, args.features)
    idx = torch.randint(0, args.subjects, (args.batch,))
    times: dict[bool, list[float]] = {True: [], False: []}
    for step in range(args.steps + 1):
        for b in ((True, False) if step % 2 == 0 else (False, True)):
            dist.barrier()
            t = time.perf_counter()
            loss = models[b](x, idx).square().mean()
            opts[b].zero_grad()
            loss.backward()
            opts[b].step()
            dist.barrier()
            if step:  # the first round warms up
                times[b].append(time.perf_counter() - t)
    if rank == 0:
        size = sum(buf.numel() * buf.element_size() for buf in models[True].module.buffers())
        print(f"2 processes (gloo, CPU), F={args.features} subjects={args.subjects} 2k={2 * args.dim} "
              f"batch={args.batch} per process; buffers {size / 2**20:.0f} MiB (torch {torch.__version__})")
        for b, ts in times.items():
            print(f"  broadcast_buffers={str(b):5s} median step {statistics.median(ts) * 1e3:8.1f} ms "
                  f"(IQR {statistics.quantiles(ts, n=4)[0] * 1e3:.1f}–{statistics.quantiles(ts, n=4)[2] * 1e3:.1f})")
        print(f"rerun: .venv/bin/python benchmarks/bench_ddp_buffers.py --features {args.features} --subjects "
              f"{args.subjects} --dim {args.dim} --batch {args.batch} --steps {args.steps}")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=129024, help="voxels per map (hcp_planted's 48×56×48 grid)")
    p.add_argument("--subjects", type=int, default=3)
    p.add_argument("--dim", type=int, default=32, help="model.alignment_dim")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args, port), nprocs=2, join=True)


if __name__ == "__main__":
    main()
