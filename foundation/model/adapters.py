"""Input adapters: turn one dataset's fMRI input into patch tokens ``(B, M, dim)``.

* :class:`ROIAdapter` — ROI datasets (NSD in the paper): each ROI row is one patch, embedded by
  one shared linear map ``E`` (Eq. 1/5).
* Volume datasets (HCP in the paper): the subject's in-mask voxels are scattered into the dense grid
  (:class:`VolumeGrid`) and a 3-D CNN reduces it to a coarse grid whose cells are the patches
  (Fig. 3a): :class:`~foundation.model.volume_resnet.ResNetVolumeAdapter` (``model.patchifier:
  resnet``, the default: the paper's ResNet stages with the Transformer layers interleaved) or
  :class:`VolumeAdapter` (``model.patchifier: cnn``: a plain CNN that runs entirely before the
  Transformer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ROIAdapter", "VolumeAdapter", "VolumeGrid"]


class ROIAdapter(nn.Module):
    """One linear embedding shared by all ROIs: ``(B, n_tokens, token_dim) -> (B, n_tokens, dim)``."""

    interleaved = False

    def __init__(self, n_tokens: int, token_dim: int, dim: int) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.token_dim = token_dim
        self.proj = nn.Linear(token_dim, dim)

    @property
    def num_tokens(self) -> int:
        return self.n_tokens

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, n_tokens, token_dim)`` -> ``(B, n_tokens, dim)``."""
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.n_tokens, self.token_dim):
            raise ValueError(
                f"ROIAdapter expects (B, {self.n_tokens}, {self.token_dim}), got {tuple(x.shape)}"
            )
        return self.proj(x.to(self.proj.weight.dtype))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose result never depends on the batch size (the same parameters and state dict).

    GroupNorm normalises each sample on its own, yet ``torch.nn.functional.group_norm`` refuses a batch of
    *one* sample whose groups hold a single value each ("Expected more than 1 value per channel"), while it
    normalises the very same sample inside a larger batch (to the bias).  A volume grid small enough that a
    stage's feature map is ``1×1×1`` with one channel per group would then fail to predict one volume, or
    with ``--batch-size 1``, after training on batches of several.  The underlying operator has no such
    check: it is called directly, so one sample gives what it gives in any batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, ...)`` -> ``(B, C, ...)``."""
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, torch.backends.cudnn.enabled)


def _norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` dividing ``channels``.

    Not BatchNorm: a batch mixes subjects (and padding-heavy volumes), so batch statistics would
    leak between samples and differ between training and evaluation.
    """
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    """``Conv3d(k=3) -> GroupNorm -> GELU``; ``(B, C_in, X, Y, Z) -> (B, C_out, X/s, Y/s, Z/s)``."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
            _norm(out_ch),
            nn.GELU(),
        )


class DownStage(nn.Sequential):
    """One stride-2 stage: a strided ConvNormAct followed by a stride-1 ConvNormAct."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvNormAct(in_ch, out_ch, stride=2), ConvNormAct(out_ch, out_ch))


class VolumeGrid(nn.Module):
    """The geometry shared by the volume patchifiers: grid, padding and scattering voxels into it.

    The input is each sample's in-mask voxels, padded to a common length ``Vmax``, plus their flat
    C-order positions in the ``grid``; padding positions hold the dummy index ``X*Y*Z``.  The
    voxels are scattered into a dense zero volume whose axes are already padded up to multiples
    of ``factor = 2**n_down`` (``n_down`` stride-2 steps), whose ``out_grid`` cells are the
    ``num_tokens`` patches (C order).

    With ``standardize`` each sample's in-mask voxels are first shifted and scaled to mean 0 and standard
    deviation 1 over that sample (``model.volume_input: standardize``): a volume normalised to [0, 1] per voxel
    (the public code's min-max) carries a constant in-brain offset of about 0.5 against the zeros outside the
    mask, and from such input the 3-D ResNet did not learn a planted response that it learns from centred input
    (docs/RESULTS.md §4i).

    Args:
        grid: ``(X, Y, Z)`` voxel grid of the dataset.
        n_down: number of stride-2 steps of the patchifier.
        standardize: standardise each sample's in-mask voxels before scattering them.
    """

    #: whether the model's Transformer layers run inside the patchifier (see ``ResNetVolumeAdapter``)
    interleaved = False
    #: the smallest variance a sample's voxels are divided by (a constant volume stays 0, not NaN)
    eps = 1e-6

    def __init__(self, grid: Sequence[int], n_down: int, *, standardize: bool = False) -> None:
        super().__init__()
        self.standardize = bool(standardize)
        grid = tuple(int(g) for g in grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"volume adapter grid must be three positive sizes, got {grid}")
        self.grid: tuple[int, ...] = grid
        self.factor = 2 ** n_down
        self.out_grid: tuple[int, ...] = tuple(math.ceil(g / self.factor) for g in grid)
        self.padded_grid: tuple[int, ...] = tuple(o * self.factor for o in self.out_grid)
        self.num_tokens = math.prod(self.out_grid)
        self.num_voxels = math.prod(grid)

    def input_dtype(self) -> torch.dtype:
        """The dtype of the first convolution's weight (what :meth:`densify` returns)."""
        raise NotImplementedError

    def tokens(self, x: Tensor) -> Tensor:
        """Feature map ``(B, D, *out_grid)`` -> tokens ``(B, num_tokens, D)`` (a free view for channels_last_3d)."""
        return x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], self.num_tokens, x.shape[1])

    def feature_map(self, t: Tensor) -> Tensor:
        """Tokens ``(B, num_tokens, D)`` -> feature map ``(B, D, *out_grid)`` with channels_last_3d strides."""
        return t.reshape(t.shape[0], *self.out_grid, t.shape[2]).permute(0, 4, 1, 2, 3)

    def _padded_positions(self, index: Tensor) -> Tensor:
        """Flat C-order positions in ``grid`` -> flat positions in ``padded_grid``.

        ``index`` ``(B, Vmax)`` int64 -> ``(B, Vmax)``; entries of the dummy ``X*Y*Z`` come out
        meaningless and are replaced by the caller.
        """
        if self.padded_grid == self.grid:
            return index
        _, gy, gz = self.grid
        _, py, pz = self.padded_grid
        x, rem = torch.div(index, gy * gz, rounding_mode="floor"), torch.remainder(index, gy * gz)
        y, z = torch.div(rem, gz, rounding_mode="floor"), torch.remainder(rem, gz)
        return (x * py + y) * pz + z

    def densify(self, voxels: Tensor, index: Tensor, *, padded: bool = True) -> Tensor:
        """Scatter in-mask voxels into a dense volume (zeros outside the mask), on their device.

        Args:
            voxels: ``(B, Vmax)`` voxel values (padding entries are ignored).
            index: ``(B, Vmax)`` int64 flat C-order positions in ``grid``; padding = ``X*Y*Z``.
            padded: return the volume padded to ``padded_grid`` (what the CNN sees) or cropped
                back to ``grid`` (a view).

        Returns:
            ``(B, 1, Xp, Yp, Zp)`` or ``(B, 1, X, Y, Z)`` in the stem's dtype, with channels_last_3d
            strides (for one channel the same memory order as NCDHW).
        """
        if voxels.dim() != 2 or voxels.shape != index.shape:
            raise ValueError(
                f"VolumeAdapter expects voxels and index of the same shape (B, Vmax), got "
                f"{tuple(voxels.shape)} and {tuple(index.shape)}"
            )
        b = voxels.shape[0]
        n_pad = math.prod(self.padded_grid)
        index = index.to(device=voxels.device, dtype=torch.long)
        if self.standardize:
            voxels = self.standardized(voxels, index < self.num_voxels)
        # One flat buffer for the whole batch plus a single dummy slot at the very end: sample b's
        # voxels land at b*n_pad + pos, every padding entry lands in the dummy slot, which is dropped.
        pos = self._padded_positions(index) + torch.arange(b, device=index.device).unsqueeze(1) * n_pad
        pos = torch.where(index >= self.num_voxels, torch.full_like(pos, b * n_pad), pos)
        dtype = self.input_dtype()
        flat = torch.zeros(b * n_pad + 1, device=voxels.device, dtype=dtype)
        flat = flat.scatter(0, pos.reshape(-1), voxels.to(dtype).reshape(-1))
        # Channels-last 3-D strides, free for one channel (the same memory as NCDHW): the stem conv then
        # writes channels_last_3d activations and every layer after it stays in that layout, which
        # oneDNN/cuDNN convolve without the NCDHW<->blocked reorders of the full-resolution
        # activations (~1.5x faster fwd+bwd on CPU at the HCP grid; docs/PERFORMANCE.md).
        vol = flat[: b * n_pad].view(b, *self.padded_grid, 1).permute(0, 4, 1, 2, 3)
        if not padded:
            x, y, z = self.grid
            vol = vol[:, :, :x, :y, :z]
        return vol

    def standardized(self, voxels: Tensor, valid: Tensor) -> Tensor:
        """Each sample's valid voxels shifted and scaled to mean 0, standard deviation 1 (padding entries 0).

        Args:
            voxels: ``(B, Vmax)`` voxel values.
            valid: ``(B, Vmax)`` bool, ``False`` at padding entries.

        Returns:
            ``(B, Vmax)`` float32 (statistics in float32 whatever the input dtype).
        """
        v = torch.where(valid, voxels.float(), 0.0)
        n = valid.sum(1, keepdim=True).clamp_min(1)
        mean = v.sum(1, keepdim=True) / n
        centred = torch.where(valid, v - mean, 0.0)
        var = centred.square().sum(1, keepdim=True) / n
        return centred * torch.rsqrt(var + self.eps)


class VolumeAdapter(VolumeGrid):
    """Plain 3-D CNN patchifier (``model.patchifier: cnn``), run entirely before the Transformer::

        densify -> stem ConvNormAct(1 -> c0) -> [DownStage(c_{i-1} -> c_i)] * len(channels) -> Conv1x1(c_last -> dim)

    and the ``out_grid`` cells are flattened (C order) into ``num_tokens`` tokens.

    Args:
        grid: ``(X, Y, Z)`` voxel grid of the dataset.
        dim: token width.
        channels: widths of the stride-2 stages; the stem has ``channels[0]``.
        standardize: standardise each sample's in-mask voxels first (:class:`VolumeGrid`).
    """

    def __init__(self, grid: Sequence[int], dim: int, channels: Sequence[int], *, standardize: bool = False) -> None:
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ValueError(f"VolumeAdapter channels must be non-empty positive ints, got {channels}")
        super().__init__(grid, len(channels), standardize=standardize)
        self.channels = channels
        self.stem = ConvNormAct(1, channels[0])
        self.stages = nn.Sequential(
            *[DownStage(c_in, c_out) for c_in, c_out in zip([channels[0], *channels[:-1]], channels)]
        )
        self.proj = nn.Conv3d(channels[-1], dim, kernel_size=1)

    def input_dtype(self) -> torch.dtype:
        return self.stem[0].weight.dtype

    def forward(self, voxels: Tensor, index: Tensor) -> Tensor:
        """``voxels`` ``(B, Vmax)``, ``index`` ``(B, Vmax)`` -> patch tokens ``(B, num_tokens, dim)``."""
        x = self.densify(voxels, index)  # (B, 1, Xp, Yp, Zp)
        return self.tokens(self.proj(self.stages(self.stem(x))))  # (B, num_tokens, dim)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, out_grid={self.out_grid}, num_tokens={self.num_tokens}"
                + (", standardize" if self.standardize else ""))
