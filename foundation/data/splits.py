"""What the closed-form (non-gradient) methods share: reading one subject's split from the shards.

``foundation.workflows.srm`` (the shared response model), ``foundation.workflows.linear`` (per-subject
ridge / logistic read-outs) and the per-subject alignments (``foundation.engine.align``) fit on whole splits at
once instead of streaming batches; they read them through :func:`read_split`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Split", "read_split"]


@dataclasses.dataclass
class Split:
    """One subject's split, in shard order.

    Attributes:
        keys: ``n`` sample keys ``dataset/subject/index``.
        stimuli: ``n`` stimulus ids.
        x: ``(n, F)`` float32 inputs, flattened (ROI ``tokens * dim``; volume in-mask voxels).
        y: ``(n, C)`` float32 multi-hot labels.
        low, high: ``(n, D_low)`` / ``(n, D_high)`` float32 guidance features of the stimuli.
    """

    keys: list[str]
    stimuli: list[str]
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keep: set[str]) -> Split:
        """The samples whose key is in ``keep``, in shard order."""
        rows = [i for i, k in enumerate(self.keys) if k in keep]
        return Split(keys=[self.keys[i] for i in rows], stimuli=[self.stimuli[i] for i in rows],
                     x=self.x[rows], y=self.y[rows], low=self.low[rows], high=self.high[rows])


def read_split(index, subject: str, split: str, *, inputs: bool = True) -> Split:
    """Read every sample of ``subject``'s ``split`` from a :class:`~foundation.data.index.ShardIndex`.

    ``inputs=False``: everything but the fMRI inputs (``x`` is ``(n, 0)``), for a caller that needs only the
    stimuli, labels or guidance: a volume split's voxels are not converted and stacked (gigabytes on HCP).
    """
    from foundation.data.loader import decode
    from foundation.data.tars import read_tars

    shards = index.shards(split, {subject})
    keys, stimuli, xs, ys, lows, highs = [], [], [], [], [], []
    expected = {str(p): c for p, c, _ in shards}
    for raw in read_tars(({"url": str(p)} for p, _, _ in shards), expected=expected, checksums=index.checksums()):
        s = decode(raw)
        keys.append(s["key"])
        stimuli.append(str(s["meta"]["stimulus"]))
        if inputs:
            xs.append(s["fmri"].reshape(-1).astype(np.float32))
        ys.append(s["labels"].astype(np.float32))
        lows.append(np.asarray(s["low"], np.float32).reshape(-1))
        highs.append(np.asarray(s["high"], np.float32).reshape(-1))
    if not keys:
        empty = np.zeros((0, 0), np.float32)
        return Split([], [], empty, np.zeros((0, index.info.num_labels), np.float32), empty, empty)
    x = np.stack(xs) if inputs else np.zeros((len(keys), 0), np.float32)
    return Split(keys, stimuli, x, np.stack(ys), np.stack(lows), np.stack(highs))
