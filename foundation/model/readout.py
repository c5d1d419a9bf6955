"""A read-out that weighs every patch position on its own (``model.volume_readout: spatial``).

The paper's readout tokens see the patches only through attention: a softmax over positions per head, then one
value map shared by every position.  A response that lives in particular voxels (a category's map over the brain)
must then be found by the convolutions, which are the same at every position, and by the few attention masks;
on planted HCP data that read-out learned slowly (docs/RESULTS.md §4i–§4j) where a linear map with a weight per
position learned in a few hundred steps.  :class:`SpatialReadout` adds such a map to the readout tokens::

    patches (B, M, D) -> Linear(D -> r) per patch -> (B, M·r) -> Linear(M·r -> R·D) -> (B, R, D)

a factorised read-out (a shared channel reduction, then a weight for every position and reduced channel), added
to the readout tokens after the final LayerNorm (``z = LN(h_R) + SpatialReadout(h_M)``, what the label head and
the guidance losses see).  Its last map starts at zero, so an untrained model computes exactly what the paper's
does.

:class:`VoxelReadout` (``model.volume_linear_rank``) goes one step further back: a low-rank linear map of the input
volume itself (average-pooled 2× per axis), the network's counterpart of a ridge read-out pooled over the subjects'
voxels in the shared grid, added the same way::

    volume (B, 1, X, Y, Z) -> avg-pool 2× -> (B, G) -> Linear(G -> r) -> Linear(r -> R·D) -> (B, R, D)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpatialReadout", "VoxelReadout"]


class SpatialReadout(nn.Module):
    """``patches (B, M, D) -> (B, R, D)``: a linear read-out with a weight per patch position (module docstring).

    Args:
        num_tokens: ``M``, the patches per sample.
        dim: ``D``, the token width.
        n_readout: ``R``, the readout tokens it adds to.
        rank: ``r``, the channels each patch is reduced to first (parameters: ``D·r + M·r·R·D``).
    """

    def __init__(self, num_tokens: int, dim: int, n_readout: int, *, rank: int = 16) -> None:
        super().__init__()
        if min(num_tokens, dim, n_readout, rank) < 1:
            raise ValueError(f"SpatialReadout needs positive sizes, got num_tokens={num_tokens} dim={dim} "
                             f"n_readout={n_readout} rank={rank}")
        self.num_tokens, self.dim, self.n_readout, self.rank = num_tokens, dim, n_readout, rank
        self.reduce = nn.Linear(dim, rank)
        self.read = nn.Linear(num_tokens * rank, n_readout * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reduction as a Linear layer's default; the position map at zero (the read-out starts switched off)."""
        self.reduce.reset_parameters()
        nn.init.zeros_(self.read.weight)
        nn.init.zeros_(self.read.bias)

    def forward(self, patches: Tensor) -> Tensor:
        b, m, d = patches.shape
        if m != self.num_tokens or d != self.dim:
            raise ValueError(f"SpatialReadout built for ({self.num_tokens}, {self.dim}) patches, got "
                             f"{tuple(patches.shape)}")
        return self.read(self.reduce(patches).flatten(1)).view(b, self.n_readout, self.dim)  # (B, R, D)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, dim={self.dim}, n_readout={self.n_readout}, rank={self.rank}"


class VoxelReadout(nn.Module):
    """``volume (B, 1, X, Y, Z) -> (B, R, D)``: a low-rank linear read-out of the voxels (module docstring).

    Args:
        grid: ``(X, Y, Z)``, the dataset's voxel grid.
        dim: ``D``, the token width.
        n_readout: ``R``, the readout tokens it adds to.
        rank: ``r``, the components the pooled volume is mapped to first (parameters: ``G·r + r·R·D``, with
            ``G`` the pooled grid's cells).
        pool: the average-pooling factor per axis (a grid not divisible by it keeps its last, partial cells).
    """

    def __init__(self, grid: Sequence[int], dim: int, n_readout: int, *, rank: int, pool: int = 2) -> None:
        super().__init__()
        grid = tuple(int(g) for g in grid)
        if len(grid) != 3 or min(*grid, dim, n_readout, rank, pool) < 1:
            raise ValueError(f"VoxelReadout needs a 3-D grid and positive sizes, got grid={grid} dim={dim} "
                             f"n_readout={n_readout} rank={rank} pool={pool}")
        self.grid, self.dim, self.n_readout, self.rank, self.pool = grid, dim, n_readout, rank, pool
        self.pooled_grid = tuple(math.ceil(g / pool) for g in grid)
        self.reduce = nn.Linear(math.prod(self.pooled_grid), rank)
        self.read = nn.Linear(rank, n_readout * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reduction as a Linear layer's default; the map to the tokens at zero (starts switched off)."""
        self.reduce.reset_parameters()
        nn.init.zeros_(self.read.weight)
        nn.init.zeros_(self.read.bias)

    def forward(self, volume: Tensor) -> Tensor:
        if volume.dim() != 5 or volume.shape[1] != 1 or tuple(volume.shape[2:]) != self.grid:
            raise ValueError(f"VoxelReadout built for (B, 1, {', '.join(map(str, self.grid))}) volumes, got "
                             f"{tuple(volume.shape)}")
        x = volume
        if self.pool > 1:
            x = F.avg_pool3d(x, self.pool, stride=self.pool, ceil_mode=True)  # (B, 1, *pooled_grid)
        return self.read(self.reduce(x.flatten(1))).view(volume.shape[0], self.n_readout, self.dim)  # (B, R, D)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, pooled_grid={self.pooled_grid}, dim={self.dim}, n_readout={self.n_readout}, "
                f"rank={self.rank}")
