"""One inference pass of a trained model over a run's shards that records the last layer's attention
from the readout tokens (for the attention figures)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.errors import DataError, FoundationError

log = logging.getLogger("foundation.plots")


@dataclasses.dataclass
class ReadoutAttention:
    """Mean last-layer attention of the readout tokens of one dataset's subjects.

    Attributes:
        dataset: dataset id.
        n_readout: ``R``; the attention rows are the readout tokens, columns ``R:`` the patch tokens.
        mean: global subject id -> ``(R, T)`` attention of each readout token over all ``T`` tokens,
            averaged over heads and samples (each row sums to 1).
        count: global subject id -> samples averaged.
    """

    dataset: str
    n_readout: int
    mean: dict[str, np.ndarray]
    count: dict[str, int]

    def patches(self, subject: str) -> np.ndarray:
        """``(R, M)``: the attention on the patch (ROI) tokens only."""
        return self.mean[subject][:, self.n_readout:]


def readout_attention(model, dataset: str, batches: Iterable[Any], *, device: Any = "cpu",
                      voxel_index=None) -> ReadoutAttention:
    """Average the last layer's readout-token attention per subject over ``batches``.

    Args:
        model: a :class:`~foundation.model.CLIPMUSED` (put in eval mode here).
        batches: objects with ``fmri`` and ``subjects`` (global ids), e.g. loader ``Batch`` es.
        voxel_index: volume datasets: a callable ``subjects -> (B, V_max)`` positions
            (:class:`~foundation.data.voxels.VoxelIndexBank`).
    """
    import torch

    model.eval()
    r = model.n_readout
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    with torch.no_grad():
        for batch in batches:
            idx = model.subject_index(batch.subjects).to(device)
            vi = voxel_index(batch.subjects).to(device) if voxel_index is not None else None
            out = model(dataset, batch.fmri.to(device).float(), idx, voxel_index=vi, return_attention=True)
            if out.attention is None:
                raise FoundationError(f"the model of dataset {dataset!r} returned no attention (no Transformer)")
            rows = out.attention[:, :, :r, :].float().mean(1).cpu().numpy().astype(np.float64)  # (B, R, T)
            for gid, a in zip(batch.subjects, rows):
                sums[gid] = sums.get(gid, 0.0) + a
                count[gid] = count.get(gid, 0) + 1
    return ReadoutAttention(dataset, r, {g: s / count[g] for g, s in sums.items()}, count)


def run_attention(model, run_dir: Path, dataset: str, subjects: Sequence[str], *, split: str = "test",
                  batch_size: int = 64, device: Any = "cpu") -> tuple[ReadoutAttention, Any]:
    """Readout attention of ``subjects`` (bare ids) of ``dataset`` over the run's ``split`` shards.

    Returns ``(attention, shard index)``; subjects without shards in the index are left out.
    """
    from foundation.data.loader import DatasetStream
    from foundation.data.voxels import VoxelIndexBank
    from foundation.workflows.predict import run_shard_index

    index = run_shard_index(Path(run_dir), dataset,
                            needed_for=f"the attention figures of dataset {dataset!r} read its samples from")
    info, theirs = model.infos[dataset], index.info
    if (info.kind, info.token_shape, info.grid) != (theirs.kind, theirs.token_shape, theirs.grid):
        raise DataError(f"{index.root}: shards of {theirs.kind} inputs (tokens {theirs.token_shape}, grid "
                        f"{theirs.grid}) do not fit the model's dataset {dataset!r} ({info.kind}, tokens "
                        f"{info.token_shape}, grid {info.grid})")
    present = [s for s in subjects if s in index.data["subjects"]]
    if len(present) < len(subjects):
        log.warning("%s: no shards for subject(s) %s in %s; their attention is not drawn", dataset,
                    sorted(set(subjects) - set(present)), index.root)
    if not present:
        return ReadoutAttention(dataset, model.n_readout, {}, {}), index
    stream = DatasetStream(index, subjects=present)
    bank = VoxelIndexBank(index, present, device=device) if info.kind == "volume" else None
    att = readout_attention(model, dataset, stream.eval_batches(split, batch_size), device=device, voxel_index=bank)
    return att, index
