"""The performance fast paths give the numbers of the plain formulation (docs/PERFORMANCE.md).

* short-sequence CPU attention (explicit softmax) == ``scaled_dot_product_attention``, values and grads;
* :class:`foundation.model.encoder.Dropout` == ``x * Bernoulli(1 - p) / (1 - p)`` with the mask it draws,
  unbiased, at rate ``1 - p``, identity in eval;
* the channels-last 3-D CNN path of :class:`VolumeAdapter` == the same layers on an NCDHW volume.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foundation.core.api import DatasetInfo
from foundation.core.config import ModelConfig
from foundation.model import CLIPMUSED, Attention, Block, VolumeAdapter
from foundation.model import encoder as encoder_mod
from foundation.model.encoder import Dropout


def _grads(module, x):
    return [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]


def _run(module, x, g):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(g)
    return out.detach(), _grads(module, x)


@pytest.mark.parametrize("t", [1, 5, 12, 32])
def test_short_sequence_attention_equals_sdpa(monkeypatch, t):
    torch.manual_seed(0)
    attn = Attention(64, 8)
    x, g = torch.randn(6, t, 64), torch.randn(6, t, 64)
    fast, fast_grads = _run(attn, x, g)
    monkeypatch.setattr(encoder_mod, "CPU_MATH_ATTENTION_MAX_TOKENS", 0)  # force the fused kernel
    ref, ref_grads = _run(attn, x, g)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _spy_on_sdpa(monkeypatch) -> list[int]:
    """Record the token count of every ``scaled_dot_product_attention`` call the encoder makes."""
    calls: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append(a[0].shape[-2])
        return real(*a, **kw)

    monkeypatch.setattr(encoder_mod.F, "scaled_dot_product_attention", spy)
    return calls


def test_attention_path_choice(monkeypatch):
    calls = _spy_on_sdpa(monkeypatch)
    attn = Attention(32, 4).eval()
    attn(torch.randn(2, encoder_mod.CPU_MATH_ATTENTION_MAX_TOKENS, 32))
    assert calls == []  # short: explicit path on CPU
    attn(torch.randn(2, encoder_mod.CPU_MATH_ATTENTION_MAX_TOKENS + 1, 32))
    assert calls == [encoder_mod.CPU_MATH_ATTENTION_MAX_TOKENS + 1]  # long: the fused kernel


def test_attention_weights_are_still_returned_for_short_sequences():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    out, w = attn(torch.randn(3, 7, 32), return_attention=True)
    assert w.shape == (3, 4, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 7))
    out2, w2 = attn(torch.randn(3, 7, 32))
    assert w2 is None and out2.shape == out.shape


def test_full_model_outputs_unchanged_by_the_attention_path(monkeypatch):
    """The NSD-shaped model (12 tokens) in eval: the fast path gives the SDPA outputs."""
    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, depth=3, heads=8, dropout=0.1, head_hidden=32)
    info = DatasetInfo(kind="roi", label_names=tuple("abcde"), subjects=("s1", "s2"), token_shape=(10, 16))
    m = CLIPMUSED(cfg, {"nsd": info}, ["nsd/s1", "nsd/s2"]).eval()
    x, idx = torch.randn(4, 10, 16), torch.tensor([0, 1, 1, 0])
    fast = m("nsd", x, idx)
    monkeypatch.setattr(encoder_mod, "CPU_MATH_ATTENTION_MAX_TOKENS", 0)
    ref = m("nsd", x, idx)
    for a, b in ((fast.z_low, ref.z_low), (fast.z_high, ref.z_high), (fast.logits, ref.logits)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- dropout
def test_dropout_is_identity_in_eval_and_at_p0():
    x = torch.randn(4, 5, 6)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_equals_mask_times_input_over_keep_rate():
    """Exactly F.dropout's arithmetic (x * (keep / (1 - p))) with the mask U[0,1) >= p it draws."""
    p = 0.1
    x = torch.randn(64, 12, 512)
    torch.manual_seed(123)
    out = Dropout(p).train()(x)
    torch.manual_seed(123)
    keep = torch.rand_like(x) >= p
    expected = x * keep.float().div_(1 - p)
    assert torch.equal(out, expected)
    # kept entries are x scaled exactly as F.dropout scales them; dropped ones are 0
    scale = torch.ones(()).div_(1 - p)
    assert torch.equal(out[keep], x[keep] * scale)
    assert (out[~keep] == 0).all()


def test_dropout_rate_unbiasedness_and_determinism():
    p = 0.1
    x = torch.ones(1_000_000)
    torch.manual_seed(0)
    out = Dropout(p).train()(x)
    n = x.numel()
    kept = int((out != 0).sum())
    assert abs(kept - (1 - p) * n) < 5 * math.sqrt(n * p * (1 - p))  # rate 1 - p (5 sigma)
    assert abs(out.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)  # E[out] = x
    torch.manual_seed(0)
    assert torch.equal(Dropout(p).train()(x), out)  # seeded: reproducible


def test_dropout_gradient_is_the_mask():
    p = 0.25
    x = torch.randn(3, 7, 11, requires_grad=True)
    torch.manual_seed(5)
    out = Dropout(p).train()(x)
    out.sum().backward()
    torch.manual_seed(5)
    keep = torch.rand_like(x) >= p
    assert torch.equal(x.grad, keep.float().div_(1 - p))


def test_dropout_falls_back_to_f_dropout_below_float32():
    x = torch.randn(8, 16).bfloat16()
    torch.manual_seed(1)
    out = Dropout(0.2).train()(x)
    torch.manual_seed(1)
    assert torch.equal(out, F.dropout(x, 0.2, training=True))


def test_cpu_fast_paths_switch_gives_the_plain_formulation(monkeypatch):
    """``CPU_FAST_PATHS = False`` (benchmarks' ``fast=off``): F.dropout's stream and the fused SDPA kernel."""
    monkeypatch.setattr(encoder_mod, "CPU_FAST_PATHS", False)
    x = torch.randn(8, 16)
    torch.manual_seed(1)
    out = Dropout(0.2).train()(x)
    torch.manual_seed(1)
    assert torch.equal(out, F.dropout(x, 0.2, training=True))
    calls = _spy_on_sdpa(monkeypatch)
    Attention(32, 4).eval()(torch.randn(2, 12, 32))
    assert calls == [12]


def test_encoder_uses_the_fast_dropout():
    blk = Block(16, 2, 2.0, 0.1, 0.0)
    assert isinstance(blk.attn.proj_drop, Dropout) and isinstance(blk.mlp.drop, Dropout)
    assert isinstance(blk.mlp.drop, torch.nn.Dropout)  # still an nn.Dropout for anything that looks


# ---------------------------------------------------------------------------------------- 3-D CNN
def _volume_batch(grid, seed):
    rng = np.random.default_rng(seed)
    masks = [rng.random(grid) < 0.6 for _ in range(2)]
    flat = [np.flatnonzero(m) for m in masks]
    vmax = max(len(f) for f in flat)
    n = math.prod(grid)
    voxels, index = np.zeros((2, vmax), np.float32), np.full((2, vmax), n, np.int64)
    for b, f in enumerate(flat):
        voxels[b, : len(f)] = rng.standard_normal(len(f))
        index[b, : len(f)] = f
    return torch.from_numpy(voxels), torch.from_numpy(index)


def test_volume_channels_last_path_equals_ncdhw():
    torch.manual_seed(0)
    grid = (13, 10, 9)
    voxels, index = _volume_batch(grid, 0)
    ad = VolumeAdapter(grid, 24, [4, 8])
    vol = ad.densify(voxels, index)
    assert vol.is_contiguous(memory_format=torch.channels_last_3d)
    assert ad.stem(vol).is_contiguous(memory_format=torch.channels_last_3d)  # the layout propagates
    tokens = ad(voxels, index)
    tokens.square().sum().backward()
    fast_grads = [p.grad.clone() for p in ad.parameters()]
    ad.zero_grad(set_to_none=True)
    ncdhw = torch.empty(vol.shape).copy_(vol)  # same values, plain NCDHW strides
    assert ncdhw.stride()[1] == math.prod(vol.shape[2:])
    assert not ad.stem(ncdhw).is_contiguous(memory_format=torch.channels_last_3d)  # really the other path
    x = ad.proj(ad.stages(ad.stem(ncdhw)))
    ref = x.permute(0, 2, 3, 4, 1).reshape(2, ad.num_tokens, 24)
    ref.square().sum().backward()
    torch.testing.assert_close(tokens, ref, rtol=1e-4, atol=1e-5)
    for a, (name, p) in zip(fast_grads, ad.named_parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-3, atol=1e-4, msg=name)
