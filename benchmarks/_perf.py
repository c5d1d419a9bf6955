"""Shared helpers of the performance benchmarks (not a benchmark itself).

* :func:`machine` — what the numbers were measured on (CPU model, cores, torch, threads, load).
* :class:`Gemm` — the machine's matmul peak, timed in the same process as the thing it is compared
  with (fp32 ``n×n @ n×n`` on CPU; bf16 on a GPU), so that load from other jobs hits both alike.
* :func:`count_flops` — ``torch.utils.flop_counter.FlopCounterMode`` plus the CPU flash-attention
  kernels it does not know (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward,
  counted with the same formula as the GPU kernels).
* :func:`record_kernels` / :func:`replay_kernels` — the step's FLOP-bearing kernels (matmuls,
  convolutions, fused attention) recorded by shape and replayed alone: the time the step would take if
  everything else were free, i.e. the efficiency ceiling of these shapes on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def med_iqr(xs: Sequence[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(quantile(xs, 0.25))}–{fmt.format(quantile(xs, 0.75))})"


def peak_rss_mib() -> float:
    """Peak RSS of this process (``VmHWM``; ``ru_maxrss`` would carry a parent's peak across exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: str = "cpu") -> dict[str, Any]:
    import torch

    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "loadavg": list(os.getloadavg()),
        "mem_total_gib": _mem_total_gib(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _meminfo_gib(key: str) -> float | None:
    """A ``/proc/meminfo`` entry (``MemTotal``, ``MemAvailable``, …) in GiB; ``None`` where there is none."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _mem_total_gib() -> float | None:
    return _meminfo_gib("MemTotal")


def mem_available_gib() -> float | None:
    return _meminfo_gib("MemAvailable")


def machine_line(info: dict[str, Any]) -> str:
    la = info["loadavg"]
    return (f"{info['cpu']}, {info['cpus']} CPUs ({info['cpu_capability']}), torch {info['torch']}, "
            f"{info['threads']} thread(s), device {info['device']}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}, "
            f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}")


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


class Gemm:
    """Times ``a @ b`` with ``n×n`` operands; ``flops_per_s()`` of the last timing."""

    def __init__(self, n: int = 4096, *, device: Any = "cpu", dtype: Any = None) -> None:
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.n = n
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(self.device, self.dtype)
        self.b = torch.randn(n, n, generator=g).to(self.device, self.dtype)
        self.out = torch.empty(n, n, device=self.device, dtype=self.dtype)
        self.flops = 2 * n**3

    def time(self, reps: int = 1) -> float:
        """Median seconds of one GEMM over ``reps`` timings (one untimed warm-up first)."""
        import torch

        torch.matmul(self.a, self.b, out=self.out)
        sync(self.device)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(self.a, self.b, out=self.out)
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` and the per-operator counts (``FlopCounterMode``, CPU SDPA included)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    custom: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        def bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        custom[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    mode = fc.FlopCounterMode(display=False, custom_mapping=custom)
    with mode:
        fn()
    per_op = {str(k): int(v) for k, v in mode.get_flop_counts().get("Global", {}).items()}
    return int(mode.get_total_flops()), per_op


#: the FLOP-bearing kernels of a step: matmuls, convolutions (fwd + bwd) and fused attention
CEILING_OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward",
               "_scaled_dot_product_flash_attention_for_cpu",
               "_scaled_dot_product_flash_attention_for_cpu_backward")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor argument's layout, kept instead of the tensor (a pytree leaf, unlike a tuple)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: Any
    device: Any


def record_kernels(fn: Callable[[], Any]) -> list[tuple[Any, tuple, dict]]:
    """The FLOP-bearing aten calls of ``fn()`` (:data:`CEILING_OPS`), in order, tensors replaced by specs.

    Each entry is ``(op, args, kwargs)`` where every tensor argument became a :class:`TensorSpec`
    (shape, stride, dtype, device): enough to replay the same kernel on fresh
    tensors of the same layout (:func:`replay_kernels`) without keeping the step's activations alive.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    wanted = {getattr(torch.ops.aten, n) for n in CEILING_OPS if hasattr(torch.ops.aten, n)}

    def spec(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
        return x

    calls: list[tuple[Any, tuple, dict]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket in wanted:
                calls.append((func, tree_map(spec, args), tree_map(spec, kwargs)))
            return func(*args, **kwargs)

    with Recorder():
        fn()
    return calls


def replay_kernels(calls: Sequence[tuple[Any, tuple, dict]], *, device: Any, reps: int = 3) -> float:
    """Seconds the recorded kernels take back to back on fresh random inputs (median over ``reps`` passes).

    Only the kernels are timed (inputs are made before each call, outside the clock): the time a step
    would take if everything but its matmuls/convolutions/attention were free.
    """
    import torch

    def make(x: Any) -> Any:
        if isinstance(x, TensorSpec):
            t = torch.empty_strided(x.shape, x.stride, dtype=x.dtype, device=x.device)
            return t.normal_() if x.dtype.is_floating_point else t.zero_()
        return x

    from torch.utils._pytree import tree_map

    passes = []
    for _ in range(reps):
        total = 0.0
        for func, args, kwargs in calls:
            a, k = tree_map(make, args), tree_map(make, kwargs)
            sync(device)
            t = time.perf_counter()
            func(*a, **k)
            sync(device)
            total += time.perf_counter() - t
        passes.append(total)
    return statistics.median(passes)


def write_results(path: str | Path | None, *, command: str, **fields: Any) -> None:
    """Write a benchmark's results to ``path`` as JSON (``command``, ``fields`` and the load average at the
    end), creating its folder; nothing when ``path`` is ``None``."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, **fields, "loadavg_end": list(os.getloadavg())}, indent=1))


def rerun(script: str, argv: Sequence[str]) -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(Path.cwd()))
    except ValueError:
        exe_s = str(exe)
    return shlex.join([exe_s, script, *argv])
