"""SpatialReadout: shapes, its zero start, and a signal only a per-position weight can read."""

from __future__ import annotations

import pytest
import torch

from foundation.model.readout import SpatialReadout, VoxelReadout


def test_shapes_zero_start_and_parameter_count():
    r = SpatialReadout(10, 8, 2, rank=3)
    x = torch.randn(4, 10, 8)
    out = r(x)
    assert out.shape == (4, 2, 8) and torch.equal(out, torch.zeros_like(out))
    assert sum(p.numel() for p in r.parameters()) == (8 * 3 + 3) + (10 * 3 * 2 * 8 + 2 * 8)


def test_wrong_patches_are_refused_naming_the_shapes():
    with pytest.raises(ValueError, match=r"built for \(10, 8\) patches, got \(4, 9, 8\)"):
        SpatialReadout(10, 8, 2)(torch.randn(4, 9, 8))
    with pytest.raises(ValueError, match="positive sizes"):
        SpatialReadout(0, 8, 2)


def test_learns_a_sign_that_depends_on_where_the_feature_is():
    # label = feature 0 at patch 0 minus feature 0 at patch 1: a mean over patches is blind to it
    torch.manual_seed(0)
    x = torch.randn(256, 6, 4)
    y = (x[:, 0, 0] - x[:, 1, 0] > 0).float()
    r = SpatialReadout(6, 4, 1, rank=2)
    head = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam([*r.parameters(), *head.parameters()], lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(r(x)[:, 0]).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = ((head(r(x)[:, 0]).squeeze(1) > 0).float() == y).float().mean().item()
    assert accuracy > 0.95
    pooled = torch.nn.Linear(4, 1)  # the same head on the patches' mean cannot do better than chance by much
    opt = torch.optim.Adam(pooled.parameters(), lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(pooled(x.mean(1)).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((pooled(x.mean(1)).squeeze(1) > 0).float() == y).float().mean().item() < 0.75


def test_voxel_readout_shapes_zero_start_and_parameter_count():
    r = VoxelReadout((5, 6, 7), 8, 2, rank=3)
    assert r.pooled_grid == (3, 3, 4)  # a partial last cell is kept
    out = r(torch.randn(4, 1, 5, 6, 7))
    assert out.shape == (4, 2, 8) and torch.equal(out, torch.zeros_like(out))
    assert sum(p.numel() for p in r.parameters()) == (36 * 3 + 3) + (3 * 2 * 8 + 2 * 8)
    with pytest.raises(ValueError, match=r"built for \(B, 1, 5, 6, 7\) volumes, got \(4, 1, 5, 6, 8\)"):
        r(torch.randn(4, 1, 5, 6, 8))
    with pytest.raises(ValueError, match="positive sizes"):
        VoxelReadout((5, 6, 7), 8, 2, rank=0)


def test_voxel_readout_learns_a_contrast_between_two_places_of_the_volume():
    # label = mean of one 2×2×2 corner minus the opposite corner: a weight per (pooled) voxel reads it directly
    torch.manual_seed(0)
    v = torch.randn(256, 1, 4, 4, 4)
    y = (v[:, 0, :2, :2, :2].mean((1, 2, 3)) - v[:, 0, 2:, 2:, 2:].mean((1, 2, 3)) > 0).float()
    r = VoxelReadout((4, 4, 4), 4, 1, rank=2)
    head = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam([*r.parameters(), *head.parameters()], lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(r(v)[:, 0]).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((head(r(v)[:, 0]).squeeze(1) > 0).float() == y).float().mean().item() > 0.95
