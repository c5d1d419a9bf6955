"""ROIAdapter and VolumeAdapter: shapes, token counts, the voxel scatter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from foundation.model import ROIAdapter, VolumeAdapter


def test_roi_adapter_shares_one_embedding_across_rois():
    torch.manual_seed(0)
    ad = ROIAdapter(5, 7, 12)
    x = torch.randn(3, 5, 7)
    x[:, 4] = x[:, 1]  # two ROIs with identical content embed identically (one shared E)
    y = ad(x)
    assert y.shape == (3, 5, 12)
    assert torch.allclose(y[:, 4], y[:, 1])
    assert torch.allclose(y, x @ ad.proj.weight.T + ad.proj.bias)
    with pytest.raises(ValueError, match=r"\(B, 5, 7\)"):
        ad(torch.randn(3, 4, 7))


@pytest.mark.parametrize(
    ("grid", "channels", "out_grid"),
    [((13, 17, 11), [4, 8], (4, 5, 3)), ((112, 128, 112), [16, 32, 64, 128], (7, 8, 7)),
     ((113, 136, 113), [16, 32, 64, 128], (8, 9, 8)), ((1, 1, 1), [2], (1, 1, 1))],
)
def test_token_count_is_ceil_of_grid_over_stride(grid, channels, out_grid):
    ad = VolumeAdapter(grid, 8, channels)
    assert ad.out_grid == out_grid
    assert ad.num_tokens == math.prod(out_grid)
    assert all(p % 2 ** len(channels) == 0 and p >= g for p, g in zip(ad.padded_grid, grid))


def test_hcp_grid_gives_392_tokens():
    assert VolumeAdapter((112, 128, 112), 128, [16, 32, 64, 128]).num_tokens == 392  # 7*8*7, the paper's


def _batch_from_masks(masks, rng, pad_value=123.0):
    """Pack per-sample masks into (voxels, index) like the loader does; also return dense truth."""
    grid = masks[0].shape
    n = math.prod(grid)
    flat = [np.flatnonzero(m) for m in masks]
    vmax = max(len(f) for f in flat)
    voxels = np.full((len(masks), vmax), pad_value, np.float32)  # padding values must be ignored
    index = np.full((len(masks), vmax), n, np.int64)
    dense = np.zeros((len(masks), *grid), np.float32)
    for b, f in enumerate(flat):
        vals = rng.standard_normal(len(f)).astype(np.float32)
        voxels[b, : len(f)] = vals
        index[b, : len(f)] = f
        dense[b].flat[f] = vals  # numpy reference reconstruction
    return torch.from_numpy(voxels), torch.from_numpy(index), dense


@pytest.mark.parametrize(("grid", "channels"), [((13, 17, 11), [4, 8]), ((8, 4, 4), [4, 4])])
def test_densify_matches_numpy_reconstruction(grid, channels):
    rng = np.random.default_rng(0)
    masks = [rng.random(grid) < p for p in (0.6, 0.2, 0.9)]
    masks[2][-1, -1, -1] = True  # the last grid voxel of the last sample (next to the dummy slot)
    voxels, index, dense = _batch_from_masks(masks, rng)
    ad = VolumeAdapter(grid, 8, channels)
    vol = ad.densify(voxels, index, padded=False)
    assert vol.shape == (3, 1, *grid)
    np.testing.assert_array_equal(vol[:, 0].numpy(), dense)
    padded = ad.densify(voxels, index)
    assert padded.shape == (3, 1, *ad.padded_grid)
    x, y, z = grid
    assert padded.sum().item() == pytest.approx(float(dense.sum()), rel=1e-5)  # padding region is zero
    assert torch.equal(padded[:, :, :x, :y, :z], vol)


def test_volume_forward_shape_gradient_and_no_batchnorm():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    grid = (13, 17, 11)
    masks = [rng.random(grid) < 0.5 for _ in range(2)]
    voxels, index, _ = _batch_from_masks(masks, rng)
    ad = VolumeAdapter(grid, 24, [4, 8])
    tokens = ad(voxels, index)
    assert tokens.shape == (2, 4 * 5 * 3, 24)
    tokens.square().mean().backward()
    assert ad.stem[0].weight.grad is not None and ad.stem[0].weight.grad.abs().sum() > 0
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ad.modules())


def test_volume_output_is_per_sample_and_padding_values_do_not_leak():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    grid = (9, 6, 7)
    masks = [rng.random(grid) < 0.5 for _ in range(2)]
    voxels, index, _ = _batch_from_masks(masks, rng, pad_value=0.0)
    ad = VolumeAdapter(grid, 8, [4, 4]).eval()
    both = ad(voxels, index)
    garbage = voxels.clone()
    garbage[index == math.prod(grid)] = 1e6
    assert torch.allclose(ad(garbage, index), both)
    alone = ad(voxels[1:], index[1:])  # GroupNorm: no statistics shared across the batch
    assert torch.allclose(alone, both[1:], atol=1e-5)


def test_volume_channels_last_3d_gives_same_tokens():
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    grid = (10, 9, 8)
    voxels, index, _ = _batch_from_masks([rng.random(grid) < 0.5 for _ in range(2)], rng)
    ad = VolumeAdapter(grid, 8, [4, 8]).eval()
    ref = ad(voxels, index)
    ad = ad.to(memory_format=torch.channels_last_3d)
    assert torch.allclose(ad(voxels, index), ref, atol=1e-5)


def test_standardize_gives_each_sample_mean_0_sd_1_over_its_own_voxels_only():
    rng = np.random.default_rng(4)
    grid = (9, 8, 7)
    masks = [rng.random(grid) < p for p in (0.3, 0.8)]
    voxels, index, dense = _batch_from_masks(masks, rng, pad_value=1e6)  # padding must not enter the statistics
    voxels = voxels * 0.2 + 0.5  # a [0, 1]-like volume: offset 0.5 inside the mask
    ad = VolumeAdapter(grid, 8, [4, 4], standardize=True)
    vol = ad.densify(voxels, index, padded=False)[:, 0]
    for b, mask in enumerate(masks):
        inside = vol[b][torch.from_numpy(mask)].double()
        assert inside.mean().item() == pytest.approx(0.0, abs=1e-5)
        assert inside.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
        assert vol[b][torch.from_numpy(~mask)].abs().max().item() == 0.0  # outside the mask stays 0
        expected = (dense[b][mask] * 0.2 + 0.5 - (dense[b][mask] * 0.2 + 0.5).mean()) / (dense[b][mask] * 0.2).std()
        np.testing.assert_allclose(inside.numpy(), expected, rtol=1e-4, atol=1e-4)
    # raw (the default) scatters the values as they are
    raw = VolumeAdapter(grid, 8, [4, 4]).densify(voxels, index, padded=False)[:, 0]
    assert raw[0][torch.from_numpy(masks[0])].mean().item() == pytest.approx(0.5, abs=0.05)


def test_standardize_removes_a_per_sample_offset_and_scale_and_keeps_a_constant_volume_finite():
    rng = np.random.default_rng(5)
    grid = (6, 6, 6)
    voxels, index, _ = _batch_from_masks([rng.random(grid) < 0.5 for _ in range(2)], rng)
    torch.manual_seed(0)
    ad = VolumeAdapter(grid, 8, [4, 4], standardize=True).eval()
    ref = ad(voxels, index)
    assert torch.allclose(ad(voxels * 7.0 + 3.0, index), ref, atol=1e-4)
    flat = torch.where(index < math.prod(grid), torch.full_like(voxels, 2.5), voxels)
    assert torch.isfinite(ad(flat, index)).all()
    assert ad.densify(flat, index).abs().max().item() == 0.0

