"""The optimizer every training run uses: :class:`torch.optim.Adam`, fused where torch has the kernel.

Why fused: torch's default Adam on CPU is a Python loop over parameters, about ten elementwise kernels
each (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, ``div``, ``addcdiv_`` ...); ``fused=True`` runs one
kernel per parameter (on GPUs: one launch per group of tensors instead of ~10 per parameter).  Same
algorithm and defaults, different rounding: a seeded run's numbers move at float32 rounding level, and
its metrics stay within the seed-to-seed spread (docs/PERFORMANCE.md, "Round 6").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["FUSED_ADAM_DEVICES", "build_adam"]

#: Device types with a fused Adam kernel in the torch this project pins (``torch.optim.optimizer``'s
#: private list, copied here so that a torch that renames it does not break training).
FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")


def _fusable(param_groups: list[dict[str, Any]], device: torch.device) -> bool:
    if device.type not in FUSED_ADAM_DEVICES:
        return False
    for group in param_groups:
        for p in group["params"]:
            if not torch.is_floating_point(p):
                return False
    return True


def build_adam(param_groups: Iterable[dict[str, Any]], *, lr: float, weight_decay: float,
               device: torch.device | str) -> torch.optim.Adam:
    """``torch.optim.Adam(param_groups, lr, weight_decay)``, fused when every parameter is a floating
    tensor and ``device`` (where the parameters will live once Accelerate has moved them) has the fused
    kernel; torch's default implementation otherwise."""
    groups = [dict(g) for g in param_groups]
    for g in groups:
        g["params"] = list(g["params"])
    fused = _fusable(groups, torch.device(device))
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)
