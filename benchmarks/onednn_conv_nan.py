"""Diagnostic (not a test): does this CPU's oneDNN convolution return a non-finite weight gradient?

Three volume-world runs stopped with a non-finite loss at stop 28 (docs/RESULTS.md §4j); a resume under
``torch.autograd.set_detect_anomaly`` named a 3-D convolution's *weight* gradient, and the same resumes with
``torch.backends.mkldnn.enabled = False`` ran on.  This times nothing: it runs one bare ``nn.Conv3d`` forward and
backward ``--trials`` times on random inputs of the shape the volume world's second stem convolution sees, with oneDNN
on and off, in one layout, and counts the trials whose weight gradient is not finite::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_conv_nan.py --trials 100
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_conv_nan.py --shape 24 28 24 --batch 16 --layout cl

Not a reliable reproduction: at stop 28 this shape gave 61 of 100 with oneDNN (0 of 100 without) once, in a
process that ran beside four training jobs, and 0 in the four processes after it (beside two); a count of 0 does not
clear a shape.
"""

from __future__ import annotations

import argparse
import time

import torch


def trial(*, cin: int, cout: int, kernel: int, stride: int, padding: int, shape: tuple[int, int, int], batch: int,
          trials: int, mkldnn: bool, layout: str) -> int:
    """How many of ``trials`` backward passes give a non-finite weight gradient."""
    torch.backends.mkldnn.enabled = mkldnn
    conv = torch.nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    bad = 0
    for _ in range(trials):
        x = torch.randn(batch, cin, *shape)
        if layout == "cl":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        conv.zero_grad()
        out = conv(x)
        out.backward(torch.randn_like(out))
        bad += int(not torch.isfinite(conv.weight.grad).all())
    return bad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, nargs=2, default=[16, 32], help="in and out channels")
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--padding", type=int, default=3)
    p.add_argument("--shape", type=int, nargs=3, default=[6, 7, 6], help="input map (the volume world's stem.3)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--layout", choices=["nc", "cl"], default="nc", help="contiguous NCDHW or channels_last_3d input")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    for mkldnn in (True, False):
        bad = trial(cin=a.channels[0], cout=a.channels[1], kernel=a.kernel, stride=a.stride, padding=a.padding,
                    shape=tuple(a.shape), batch=a.batch, trials=a.trials, mkldnn=mkldnn, layout=a.layout)
        print(f"Conv3d({a.channels[0]}, {a.channels[1]}, {a.kernel}, stride={a.stride}, padding={a.padding}) on "
              f"{(a.batch, a.channels[0], *a.shape)} ({a.layout}), oneDNN {'on' if mkldnn else 'off'}: non-finite "
              f"weight gradient in {bad} of {a.trials} trials", flush=True)
    print(f"torch {torch.__version__}, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
