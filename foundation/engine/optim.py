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

__all__ = ["FUSED_ADAM_DEVICES", "NonFiniteStepGuard", "build_adam"]

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


class NonFiniteStepGuard:
    """Skips an optimizer step whose gradient norm is not finite, and counts the skips.

    A step with a NaN or infinite gradient would write NaN into every parameter and both Adam moments
    (through the clipping coefficient, every gradient becomes NaN), and the run would stop at the next
    check with a non-finite loss.  Seen on CPUs: oneDNN's weight gradient of the volume patchifier's stem
    convolution, wrong (and some steps NaN) on small maps while the loss was finite (docs/RESULTS.md §4k; the stem
    now pads such maps itself).  The guard leaves the parameters and the optimizer's state as they were for
    such a step, as AMP's gradient scaler does for float16.

    No device sync per step: with fused Adam the decision travels as a tensor (the kernel's
    ``found_inf``, which also takes the step count back); other Adam implementations read it on the
    host (one sync per step).  :meth:`total` reads the count (one sync): the trainer calls it where it
    already syncs (logging, validation, checkpoints).
    """

    def __init__(self, optimizer: Any, device: torch.device | str) -> None:
        self.inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds torch's Adam
        self.fused = all(bool(g.get("fused")) for g in self.inner.param_groups)
        self.skipped = torch.zeros((), dtype=torch.float32, device=device)
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def step(self, optimizer: Any, grad_norm: torch.Tensor | None, *, step: int) -> None:
        """``optimizer.step()``, unless ``grad_norm`` (the total gradient norm of this step) is not finite.

        ``grad_norm=None`` (no norm computed: a micro-step that accumulates) steps as usual."""
        if grad_norm is None:
            optimizer.step()
            return
        bad = (~torch.isfinite(grad_norm.detach())).to(torch.float32).reshape(())
        self.skipped += bad
        self.first = torch.where((bad > 0) & (self.first < 0), torch.full_like(self.first, step), self.first)
        if self.fused:
            self.inner.found_inf = bad
            try:
                optimizer.step()
            finally:
                del self.inner.found_inf
        elif not bool(bad):
            optimizer.step()

    def total(self) -> tuple[int, int]:
        """(steps skipped so far, the first of them or -1): one device sync."""
        return int(self.skipped), int(self.first)
