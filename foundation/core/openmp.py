"""The OpenMP wait policy, set before torch is imported (``foundation`` itself does not import torch).

OpenMP threads that spin-wait for each other collapse when other processes share the cores (3× slower
training steps on 2 shared cores, docs/PERFORMANCE.md), so the ``foundation`` command and
``accelerate launch foundation/train.py`` make idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``).  A
policy the user set wins, and so does a bounded spin asked for with ``GOMP_SPINCOUNT`` (libgomp).
"""

from __future__ import annotations

import os


def default_wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or a spin count; call before torch loads."""
    if "GOMP_SPINCOUNT" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
