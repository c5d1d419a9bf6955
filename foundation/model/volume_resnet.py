"""The paper's volume patchifier: ResNet-style 3-D stages with the Transformer layers interleaved.

The public CLIP-MUSED code (``models.py``, ``ResNet_MS`` with ``depth=18``) feeds the cropped HCP
volume ``(1, 112, 128, 112)`` through::

    conv 7³ /2 (1 -> 32) -> conv 7³ /2 (32 -> 64)                      56×64×56 -> 28×32×28
    layer1: 2 BasicBlocks 64, /1 -> layer2: 2 BasicBlocks 128, /2         28×32×28 -> 14×16×14
    layer3: 2 BasicBlocks 512, /2                                         7×8×7 = 392 tokens of 512
    token attention 1: the subject's low/high tokens + the 392 cells attend (cells: residual)
    layer4: 2 BasicBlocks 512, /1
    token attention 2; the head reads the two subject tokens

so CNN and attention layers alternate. :class:`ResNetVolumeAdapter` builds that shape from
``model.volume_channels`` ``[c0, c1, ..., c_{k-1}]`` (paper: ``[32, 64, 128, 512]``, ``k`` stride-2 steps,
``factor = 2**k``):

* ``k`` ≥ 2: stem ``conv 7³/2 -> c0``, ``conv 7³/2 -> c1``, each GroupNorm + ReLU; then residual stages
  ``c1 /1`` and ``c2 .. c_{k-1}`` each ``/2`` (``k = 1``: one stem conv, one ``c0 /1`` stage);
* a 1×1 projection to the token width ``dim`` (none when ``c_{k-1} == dim``, as in the paper);
* one more residual stage at ``dim``, stride 1 (``layer4``), *after* the first Transformer layer(s).

With ``interleaved = True`` the model runs its own Transformer blocks inside the patchifier
(:meth:`ResNetVolumeAdapter.forward_with_encoder`): the first ``depth - 1`` blocks on the readout +
patch tokens after the last stride-2 stage, then ``layer4`` on the patch tokens (as a feature map),
then the last block — the paper's alternation for its 2 layers (with ``depth = 1`` there is nothing
to alternate: ``layer4``, then the block). Differences from the public code, on
purpose: GroupNorm instead of BatchNorm (a batch mixes subjects and padding-heavy volumes; batch
statistics would leak between samples), our pre-norm Transformer blocks (shared by all datasets) in
place of its post-BatchNorm attention blocks, the readout tokens keep a residual path, and its
``ShallowAttention`` MLP-mixer after ``layer2`` is left out. Residual blocks start as identities (the
last GroupNorm of each block is zero-initialised, as the public code's ``zero_init_residual``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import VolumeGrid, _norm

__all__ = ["BasicBlock3d", "PositionMixer3d", "ResNetVolumeAdapter", "StemConv3d"]


class StemConv3d(nn.Conv3d):
    """``nn.Conv3d`` that pads explicitly, on a CPU, an input not larger than its kernel.

    The same function and parameters (state-dict keys) as ``nn.Conv3d``.  Why: on CPUs, oneDNN's weight gradient
    of a 7³ stride-2 convolution zero-padded by 3 is wrong for maps of 5 to 7 voxels (torch 2.14.1: errors of 1e20 to
    5e34 against torch's own convolution, NaN, once a heap corruption that aborted the process; 3–4 and ≥ 8
    voxels agree to 1e-4), which is the stem's second convolution on the volume world's 6×7×6 map
    (docs/RESULTS.md §4k).  With the padding written into the input first, the gradient agrees with the
    reference.  Inputs larger than the kernel (every HCP-sized map) and other devices keep the plain call, so
    their results and speed do not change.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        small = any(s <= k for s, k in zip(input.shape[2:], self.kernel_size))
        if input.device.type != "cpu" or not small or self.padding_mode != "zeros" or not any(self.padding):
            return super()._conv_forward(input, weight, bias)
        pad = [p for q in reversed(self.padding) for p in (q, q)]  # F.pad: last dimension first
        return F.conv3d(F.pad(input, pad), weight, bias, self.stride, 0, self.dilation, self.groups)


class BasicBlock3d(nn.Module):
    """ResNet BasicBlock in 3-D: ``relu(GN(conv3(relu(GN(conv3(x))))) + shortcut(x))``.

    ``(B, C_in, X, Y, Z) -> (B, C_out, X/s, Y/s, Z/s)``; the shortcut is a strided 1×1 conv + GN when the
    shape changes.
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.norm2 = _norm(out_ch)
        nn.init.zeros_(self.norm2.weight)  # the block starts as its shortcut
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv3d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                                          _norm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))


def _stage(in_ch: int, out_ch: int, *, stride: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock3d(in_ch, out_ch, stride=stride),
                         *[BasicBlock3d(out_ch, out_ch) for _ in range(blocks - 1)])


class PositionMixer3d(nn.Module):
    """The public code's ``ShallowAttention`` (after ``layer2``): an MLP over channels, then one over positions.

    ``(B, C, X, Y, Z) -> (B, C, X, Y, Z)``, flattened to ``(B, C, N)`` with ``N = X·Y·Z``::

        h = x + GN(MLP_C(x))        # per position, C -> C/2 -> C (1×1 convolutions)
        h = h + GN(MLP_N(h))        # per channel,  N -> N/2 -> N: a learned weight for every pair of positions

    The position MLP is the only place in the patchifier with weights tied to *where* a cell is (convolutions
    are the same everywhere), so a response confined to particular voxels can be read here before the
    attention pools the cells.  GroupNorm instead of the public code's BatchNorm1d; the second norm starts
    at zero, so the position MLP starts switched off (as there).
    """

    def __init__(self, channels: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        n = math.prod(self.grid)
        self.channel_mlp = nn.Sequential(nn.Conv1d(channels, max(1, channels // 2), kernel_size=1), nn.GELU(),
                                         nn.Conv1d(max(1, channels // 2), channels, kernel_size=1))
        self.norm1 = _norm(channels)
        self.position_mlp = nn.Sequential(nn.Linear(n, max(1, n // 2)), nn.GELU(), nn.Linear(max(1, n // 2), n))
        self.norm2 = _norm(channels)
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        if tuple(x.shape[2:]) != self.grid:
            raise ValueError(f"PositionMixer3d built for grid {self.grid}, got a feature map {tuple(x.shape)}")
        h = x.reshape(b, c, -1)  # (B, C, N)
        h = h + self.norm1(self.channel_mlp(h))
        h = h + self.norm2(self.position_mlp(h))
        return h.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


class ResNetVolumeAdapter(VolumeGrid):
    """ResNet-style 3-D patchifier with token attention between its last stages (module docstring).

    Args:
        grid: ``(X, Y, Z)`` voxel grid of the dataset.
        dim: token width (the Transformer's).
        channels: widths ``[c0, ..., c_{k-1}]`` of the ``k`` stride-2 steps (paper: ``[32, 64, 128, 512]``).
        blocks: BasicBlocks per residual stage (ResNet-18: 2).
        standardize: standardise each sample's in-mask voxels first (:class:`~foundation.model.adapters.VolumeGrid`).
        mixer: run a :class:`PositionMixer3d` before the last stride-2 stage (the public code's
            ``ShallowAttention`` after ``layer2``; needs at least 3 ``channels``).
    """

    interleaved = True

    def __init__(self, grid: Sequence[int], dim: int, channels: Sequence[int], *, blocks: int = 2,
                 standardize: bool = False, mixer: bool = False) -> None:
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ValueError(f"ResNetVolumeAdapter channels must be non-empty positive ints, got {channels}")
        if blocks < 1:
            raise ValueError(f"ResNetVolumeAdapter blocks must be >= 1, got {blocks}")
        if mixer and len(channels) < 3:
            raise ValueError(f"ResNetVolumeAdapter mixer runs before the last stride-2 residual stage: it needs at "
                             f"least 3 channels, got {channels}")
        super().__init__(grid, len(channels), standardize=standardize)
        self.channels = channels
        n_stem = min(2, len(channels))
        stem: list[nn.Module] = []
        for c_in, c_out in zip([1, *channels[: n_stem - 1]], channels[:n_stem]):
            stem += [StemConv3d(c_in, c_out, kernel_size=7, stride=2, padding=3, bias=False), _norm(c_out), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        c = channels[n_stem - 1]
        stages = [_stage(c, c, stride=1, blocks=blocks)]
        for i, c_out in enumerate(channels[n_stem:], start=n_stem):
            if mixer and i == len(channels) - 1:
                stages.append(PositionMixer3d(c, [2 * g for g in self.out_grid]))
            stages.append(_stage(c, c_out, stride=2, blocks=blocks))
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.proj: nn.Module = nn.Identity() if c == dim else nn.Conv3d(c, dim, kernel_size=1)
        self.post = _stage(dim, dim, stride=1, blocks=blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def input_dtype(self) -> torch.dtype:
        return self.stem[0].weight.dtype

    def features(self, voxels: Tensor, index: Tensor) -> Tensor:
        """``voxels``, ``index`` ``(B, Vmax)`` -> feature map ``(B, dim, *out_grid)`` before ``post``."""
        return self.proj(self.stages(self.stem(self.densify(voxels, index))))

    def forward(self, voxels: Tensor, index: Tensor) -> Tensor:
        """All stages, no attention (the CNN baselines): ``(B, Vmax)`` -> tokens ``(B, num_tokens, dim)``."""
        return self.tokens(self.post(self.features(voxels, index)))

    def forward_with_encoder(self, voxels: Tensor, index: Tensor, readout: Tensor, *, pos: Tensor,
                             blocks: Sequence[nn.Module], pos_drop: nn.Module,
                             return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """The paper's alternation: stages, Transformer block(s), ``post`` stage, the last block.

        Args:
            voxels, index: ``(B, Vmax)`` in-mask voxels and their flat grid positions.
            readout: ``(B, R, dim)`` readout (subject) tokens.
            pos: ``(1, R + num_tokens, dim)`` positional embedding, added once before the first block.
            blocks: the model's Transformer blocks (with one block: ``post`` runs before it, no alternation).
            pos_drop: dropout after the positional embedding.
            return_attention: return the last block's attention weights.

        Returns:
            ``(h (B, R + num_tokens, dim), last-block weights (B, heads, T, T) or None)``.
        """
        if not blocks:
            raise ValueError("the resnet patchifier needs at least one Transformer block")
        r = readout.shape[1]
        h = pos_drop(torch.cat([readout, self.tokens(self.features(voxels, index))], dim=1) + pos)
        weights = None
        for blk in blocks[:-1]:
            h, _ = blk(h)
        patches = self.tokens(self.post(self.feature_map(h[:, r:])))
        h, weights = blocks[-1](torch.cat([h[:, :r], patches], dim=1), return_attention=return_attention)
        return h, weights

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, out_grid={self.out_grid}, num_tokens={self.num_tokens}, interleaved"
                + (", standardize" if self.standardize else ""))
