"""Per-subject voxel positions of volume datasets, kept on the device.

Shards store only in-mask voxels ``(V_s,)``; the volume adapter needs to know where each value goes in
the grid.  The bank holds one row of flat C-order grid positions per subject, padded with the dummy
position ``X*Y*Z`` (dropped by the adapter), so a batch's scatter index is one gather on the device.
"""

from __future__ import annotations

import numpy as np
import torch

from foundation.data.index import ShardIndex


class VoxelIndexBank:
    """``(S, V_max)`` flat grid positions of each subject's mask, on ``device``."""

    def __init__(self, index: ShardIndex, subjects: list[str], device: torch.device | str = "cpu") -> None:
        grid = tuple(index.data["grid"])
        self.dataset = index.dataset
        self.pad = int(np.prod(grid))
        self.v_max = max(int(index.data["voxels"][s]) for s in index.data["subjects"])
        table = np.full((len(subjects), self.v_max), self.pad, dtype=np.int64)
        for row, subject in enumerate(subjects):
            flat = index.voxel_positions(subject)
            table[row, : len(flat)] = flat
        self.row = {f"{index.dataset}/{s}": i for i, s in enumerate(subjects)}
        self.table = torch.from_numpy(table).to(device)

    def __call__(self, subjects: list[str]) -> torch.Tensor:
        """``(B, V_max)`` long positions for the batch's global subject ids."""
        rows = torch.tensor([self.row[s] for s in subjects], device=self.table.device)
        return self.table[rows]
