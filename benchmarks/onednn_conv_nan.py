"""Diagnostic (not a test): is this CPU's oneDNN weight gradient of a 3-D convolution right, map size by map size?

Volume-world runs stopped with a non-finite loss (docs/RESULTS.md §4j), and resumed runs skipped steps whose
gradient was not finite (§4k).  This compares, for each input map size of ``--sizes`` (a cube ``n×n×n``), the weight
gradient of one ``Conv3d`` forward + backward computed by oneDNN with the one torch computes without it
(``torch.backends.mkldnn.enabled = False``, the reference), the same weights, input and output gradient, and with
the padding written into the input first (what ``foundation.model.volume_resnet.StemConv3d`` does on a CPU for maps
not larger than its kernel).  Each size runs in its own process, since a wrong kernel can corrupt the heap::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_conv_nan.py                       # 7³/2 pad 3, n = 3..9
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_conv_nan.py --kernel 3 --padding 1 --sizes 1 2 3 4

Measured (docs/RESULTS.md §4k, torch 2.14.1, oneDNN 3.12): n = 5, 6, 7 wrong (errors up to 1e34, NaN, a heap
corruption abort), n = 3, 4 and ≥ 8 right to 1e-4; padded first, right at every n.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
import torch.nn.functional as F


def one(*, n: int, cin: int, cout: int, kernel: int, stride: int, padding: int, batch: int, seed: int) -> str:
    """One map size: the largest |oneDNN − reference| of the weight gradient, plain and padded first."""
    torch.manual_seed(seed)
    w = torch.randn(cout, cin, kernel, kernel, kernel) * (cin * kernel**3) ** -0.5
    x = torch.randn(batch, cin, n, n, n)
    out = (n + 2 * padding - kernel) // stride + 1
    g = torch.randn(batch, cout, out, out, out)

    def grad(mkldnn: bool, padded: bool) -> torch.Tensor:
        torch.backends.mkldnn.enabled = mkldnn
        try:
            ww = w.clone().requires_grad_(True)
            if padded:
                F.conv3d(F.pad(x, [padding] * 6), ww, None, stride, 0).backward(g)
            else:
                F.conv3d(x, ww, None, stride, padding).backward(g)
            return ww.grad
        finally:
            torch.backends.mkldnn.enabled = True

    ref = grad(False, False)
    plain, padded = grad(True, False), grad(True, True)
    scale = float(ref.abs().max())
    return (f"n = {n}: reference max |grad| {scale:.3g}; oneDNN max |error| {float((plain - ref).abs().max()):.3g}"
            f" (finite: {bool(torch.isfinite(plain).all())}); padded first {float((padded - ref).abs().max()):.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, nargs=2, default=[16, 32], help="in and out channels")
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--padding", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=list(range(3, 10)), help="cube edges of the input map")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the per-size worker
    a = p.parse_args()
    spec = dict(cin=a.channels[0], cout=a.channels[1], kernel=a.kernel, stride=a.stride, padding=a.padding,
                batch=a.batch, seed=a.seed)
    if a.one is not None:
        print(one(n=a.one, **spec), flush=True)
        return
    print(f"Conv3d({a.channels[0]}, {a.channels[1]}, {a.kernel}, stride={a.stride}, padding={a.padding}), batch "
          f"{a.batch}, torch {torch.__version__}; weight gradient against torch's convolution without oneDNN")
    for n in a.sizes:
        args = [sys.executable, __file__, "--one", str(n), "--channels", *map(str, a.channels), "--kernel",
                str(a.kernel), "--stride", str(a.stride), "--padding", str(a.padding), "--batch", str(a.batch),
                "--seed", str(a.seed)]
        proc = subprocess.run(args, capture_output=True, text=True)
        line = proc.stdout.strip() or f"n = {n}: the process died (exit {proc.returncode}): " + \
            " ".join(proc.stderr.split())[-200:]
        print(line, flush=True)


if __name__ == "__main__":
    main()
