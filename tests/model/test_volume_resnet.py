"""The paper's volume patchifier (``model.patchifier: resnet``): shape, alternation, residual init, pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.core.api import DatasetInfo
from foundation.core.config import ModelConfig
from foundation.model import CLIPMUSED, ResNetVolumeAdapter, VolumeAdapter
from foundation.model.volume_resnet import BasicBlock3d, PositionMixer3d

GRID = (12, 14, 12)
VOL = DatasetInfo(kind="volume", label_names=("x", "y", "z"), subjects=("a", "b"), grid=GRID)


def cfg(**kw) -> ModelConfig:
    base = dict(dim=16, depth=2, heads=2, head_hidden=8, dropout=0.0, volume_channels=[4, 8])
    return ModelConfig(**{**base, **kw})


def batch(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n = int(np.prod(GRID))
    index = np.stack([np.sort(rng.choice(n, 600, replace=False)) for _ in range(b)])
    return torch.from_numpy(rng.normal(size=(b, 600)).astype(np.float32)), torch.from_numpy(index)


def test_hcp_crop_gives_the_papers_392_tokens_and_stage_widths() -> None:
    a = ResNetVolumeAdapter((111, 127, 111), 512, [32, 64, 128, 512])
    assert a.out_grid == (7, 8, 7) and a.num_tokens == 392 and a.padded_grid == (112, 128, 112)
    convs = [m for m in a.stem if isinstance(m, torch.nn.Conv3d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (7, 7, 7), (2, 2, 2)), (32, 64, (7, 7, 7), (2, 2, 2))]
    # layer1 64 /1, layer2 128 /2, layer3 512 /2, then layer4 512 /1 after the first attention; 2 blocks each
    widths = [(s[0].conv1.out_channels, s[0].conv1.stride[0], len(s)) for s in a.stages]
    assert widths == [(64, 1, 2), (128, 2, 2), (512, 2, 2)]
    assert isinstance(a.proj, torch.nn.Identity)  # c_last == dim: no projection, as in the paper
    assert (a.post[0].conv1.out_channels, a.post[0].conv1.stride[0], len(a.post)) == (512, 1, 2)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in a.modules())


def test_residual_blocks_start_as_their_shortcut() -> None:
    block = BasicBlock3d(6, 6)
    x = torch.randn(2, 6, 4, 5, 3)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_transformer_blocks_alternate_with_the_last_stage() -> None:
    torch.manual_seed(0)
    m = CLIPMUSED(cfg(), {"v": VOL}, ["v/a", "v/b"]).eval()
    order: list[str] = []
    adapter = m.adapters["v"]
    for name, mod in [("stages", adapter.stages), ("block0", m.encoder.blocks[0]), ("post", adapter.post),
                      ("block1", m.encoder.blocks[1])]:
        mod.register_forward_hook(lambda *_, name=name: order.append(name))
    vox, idx = batch(3)
    out = m("v", vox, m.subject_index(["v/a", "v/b", "v/a"]), voxel_index=idx, return_attention=True)
    assert order == ["stages", "block0", "post", "block1"]
    assert out.logits.shape == (3, 3) and out.attention.shape == (3, 2, 2 + adapter.num_tokens, 2 + adapter.num_tokens)
    # the subject tokens change the patch features that layer4 sees: different subject, different output
    other = m("v", vox, m.subject_index(["v/b", "v/a", "v/b"]), voxel_index=idx)
    assert not torch.allclose(out.logits, other.logits)


def test_gradients_reach_every_part_and_samples_stay_independent() -> None:
    torch.manual_seed(0)
    m = CLIPMUSED(cfg(), {"v": VOL}, ["v/a", "v/b"]).eval()
    vox, idx = batch(4)
    sub = m.subject_index(["v/a", "v/b", "v/a", "v/b"])
    out = m("v", vox, sub, voxel_index=idx)
    out.logits.sum().backward()
    adapter = m.adapters["v"]
    # (a residual branch starts at zero, so at init only its last norm's gain gets a gradient)
    for name, p in [("stem", adapter.stem[0].weight), ("post", adapter.post[0].norm2.weight),
                    ("block0", m.encoder.blocks[0].attn.qkv.weight), ("tokens", m.subject_tokens.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # GroupNorm, not BatchNorm: sample 0 alone gives the same logits as in the batch
    alone = m("v", vox[:1], sub[:1], voxel_index=idx[:1])
    torch.testing.assert_close(alone.logits, out.logits[:1], rtol=1e-4, atol=1e-5)


def test_cnn_baselines_pool_volume_tokens_instead_of_flattening() -> None:
    for patchifier in ("resnet", "cnn"):
        m = CLIPMUSED(cfg(tokens="shared", backbone="mlp", patchifier=patchifier), {"v": VOL}, ["v/a"])
        assert m.mlps["v"][0].in_features == 16  # dim, not num_tokens * dim
        vox, idx = batch(2)
        assert m("v", vox, m.subject_index(["v/a", "v/a"]), voxel_index=idx).logits.shape == (2, 3)
    # the HCP crop: one hidden layer of dim × 2·dim, not 392·512 × 1024 (205 M weights)
    hcp = DatasetInfo(kind="volume", label_names=tuple("abc"), subjects=("1",), grid=(111, 127, 111))
    big = CLIPMUSED(cfg(dim=512, heads=8, tokens="shared", backbone="mlp", patchifier="cnn",
                        volume_channels=[16, 32, 64, 128]), {"hcp": hcp}, ["hcp/1"])
    assert big.mlps["hcp"][0].weight.numel() == 512 * 1024


def test_cnn_patchifier_kept_as_an_option_and_old_checkpoints_rebuild_it() -> None:
    m = CLIPMUSED(cfg(patchifier="cnn"), {"v": VOL}, ["v/a"])
    assert type(m.adapters["v"]) is VolumeAdapter
    d = m.config_dict()
    del d["model"]["patchifier"]  # a checkpoint written before the option existed
    assert type(CLIPMUSED.from_config_dict(d).adapters["v"]) is VolumeAdapter
    assert type(CLIPMUSED(cfg(), {"v": VOL}, ["v/a"]).adapters["v"]) is ResNetVolumeAdapter
    with pytest.raises(ValueError, match="patchifier"):
        CLIPMUSED(cfg(patchifier="vit"), {"v": VOL}, ["v/a"])


def test_the_public_codes_position_mixer_sits_before_the_last_stride_2_stage_at_its_grid() -> None:
    a = ResNetVolumeAdapter((111, 127, 111), 512, [32, 64, 128, 512], mixer=True)
    kinds = [type(s).__name__ for s in a.stages]
    assert kinds == ["Sequential", "Sequential", "PositionMixer3d", "Sequential"]
    mixer = a.stages[2]
    # the public code's ShallowAttention(dim1=128, dim2=14*16*14): 128 channels at the 14×16×14 grid of layer2
    assert mixer.grid == (14, 16, 14) and mixer.channel_mlp[0].in_channels == 128
    assert (mixer.position_mlp[0].in_features, mixer.position_mlp[0].out_features) == (3136, 1568)
    with pytest.raises(ValueError, match="at least 3 channels"):
        ResNetVolumeAdapter(GRID, 16, [4, 8], mixer=True)


def test_position_mixer_starts_without_its_position_mlp_and_then_mixes_positions() -> None:
    torch.manual_seed(0)
    mixer = PositionMixer3d(6, (3, 4, 2))
    x = torch.randn(2, 6, 3, 4, 2)
    channel_only = x.flatten(2) + mixer.norm1(mixer.channel_mlp(x.flatten(2)))
    torch.testing.assert_close(mixer(x), channel_only.view_as(x))  # the position MLP's norm starts at zero
    with torch.no_grad():
        mixer.norm2.weight.fill_(1.0)
    y = x.clone()
    y[:, :, 0, 0, 0] += 1.0  # one cell changes: with the position MLP on, other cells see it
    changed = (mixer(y) - mixer(x)).abs().amax(dim=1)  # (B, X, Y, Z)
    assert (changed.flatten(1)[:, 1:] > 1e-6).any()
    with pytest.raises(ValueError, match=r"built for grid \(3, 4, 2\)"):
        mixer(torch.randn(2, 6, 3, 4, 3))


def test_the_mixer_reaches_the_model_and_its_config_round_trip() -> None:
    grid = (16, 16, 16)
    info = DatasetInfo(kind="volume", label_names=("x", "y"), subjects=("a",), grid=grid)
    m = CLIPMUSED(cfg(volume_channels=[4, 8, 16], volume_mixer=True), {"v": info}, ["v/a"])
    assert any(isinstance(s, PositionMixer3d) for s in m.adapters["v"].stages)
    d = m.config_dict()
    m2 = CLIPMUSED.from_config_dict(d)
    m2.load_state_dict(m.state_dict())
    del d["model"]["volume_mixer"]  # a checkpoint written before the option existed: no mixer
    assert not any(isinstance(s, PositionMixer3d) for s in CLIPMUSED.from_config_dict(d).adapters["v"].stages)


def test_the_stem_convolution_pads_a_map_not_larger_than_its_kernel_itself_and_computes_the_same_function() -> None:
    from foundation.model.volume_resnet import StemConv3d

    torch.manual_seed(0)
    plain = torch.nn.Conv3d(16, 32, kernel_size=7, stride=2, padding=3, bias=False)
    stem = StemConv3d(16, 32, kernel_size=7, stride=2, padding=3, bias=False)
    stem.load_state_dict(plain.state_dict())  # the same parameters under the same keys
    for shape in [(4, 16, 6, 7, 6), (2, 16, 7, 7, 7), (2, 16, 9, 8, 10)]:
        x = torch.randn(*shape)
        g = torch.randn(shape[0], 32, *[(s + 1) // 2 for s in shape[2:]])
        torch.backends.mkldnn.enabled = False  # torch's own convolution: the reference
        try:
            xr = x.clone().requires_grad_(True)
            plain(xr).backward(g)
        finally:
            torch.backends.mkldnn.enabled = True
        xs = x.clone().requires_grad_(True)
        y = stem(xs)
        y.backward(g)
        assert y.shape == g.shape
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stem.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
        if shape[2] > 7:  # larger than the kernel: the plain call, bit for bit
            assert torch.equal(y, plain(x))
        plain.zero_grad()
        stem.zero_grad()
    adapter = ResNetVolumeAdapter((12, 14, 12), 32, [8, 16])
    assert all(isinstance(adapter.stem[i], StemConv3d) for i in (0, 3))
