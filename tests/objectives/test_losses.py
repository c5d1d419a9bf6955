"""Losses against hand computations on 3x3 examples (expected numbers derived in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from foundation.core.config import LossConfig
from foundation.objectives.losses import bce_loss, clip_mused_loss, cosine_rsm, orth_loss, rsa_loss
from foundation.model import ModelOutput

R = 1 / math.sqrt(2)
S5 = math.sqrt(5)

# Neural features x and stimulus features y (rows are samples).
X = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
# cos(x0,x1) = 0, cos(x0,x2) = 1/sqrt2, cos(x1,x2) = 1/sqrt2
M_X = [[1, 0, R], [0, 1, R], [R, R, 1]]
Y = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
# cos(y0,y1) = 1, cos(y0,y2) = 0, cos(y1,y2) = 0
M_Y = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
# ||M_Y - M_X||_F^2 = 2*(1-0)^2 + 2*(0-R)^2 + 2*(0-R)^2 = 2 + 1 + 1 = 4  ->  /B^2 = 4/9
RSA_XY = 4 / 9

Z_HIGH = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [2.0, 0.0, 1.0]]
# X @ Z_HIGH^T = [[0,1,2],[0,0,0],[0,1,2]]  ->  squares 1+4+1+4 = 10  ->  /9
ORTH = 10 / 9
# cos of Z_HIGH rows: (0,1) = 0, (0,2) = 1/sqrt5, (1,2) = 2/sqrt5
F_HIGH = [[0.0, 0.0, 3.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0]]
# cos of F_HIGH rows: (0,1) = 0, (0,2) = 1, (1,2) = 0
RSA_HIGH = (2 * (1 - 1 / S5) ** 2 + 2 * (2 / S5) ** 2) / 9

L3 = math.log(3)
LOGITS = [[0.0, L3, -L3], [L3, 0.0, 0.0], [-L3, -L3, L3]]
LABELS = [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
# sigmoid(0) = 1/2, sigmoid(ln3) = 3/4, sigmoid(-ln3) = 1/4; per entry -[y log p + (1-y) log(1-p)]:
BCE_TABLE = [
    [-math.log(1 / 2), -math.log(3 / 4), -math.log(3 / 4)],
    [-math.log(1 / 4), -math.log(1 / 2), -math.log(1 / 2)],
    [-math.log(1 / 4), -math.log(3 / 4), -math.log(3 / 4)],
]
BCE = sum(map(sum, BCE_TABLE)) / 9


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def test_cosine_rsm_by_hand():
    assert torch.allclose(cosine_rsm(t(X)), t(M_X), atol=1e-6)
    assert torch.allclose(cosine_rsm(t(Y)), t(M_Y), atol=1e-6)
    m = cosine_rsm(t(X, torch.float16))
    assert m.dtype == torch.float32 and torch.allclose(m, t(M_X), atol=1e-3)


def test_cosine_rsm_zero_row_is_finite():
    m = cosine_rsm(t([[0.0, 0.0], [3.0, 4.0]]))
    assert torch.isfinite(m).all()
    assert m[0].abs().max() == 0 and m[1, 1].item() == pytest.approx(1.0)


def test_cosine_rsm_is_float32_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = cosine_rsm(t(X))
    assert m.dtype == torch.float32 and torch.allclose(m, t(M_X), atol=1e-6)


def test_rsa_loss_by_hand():
    assert rsa_loss(t(M_Y), t(M_X)).item() == pytest.approx(RSA_XY, rel=1e-6)
    assert rsa_loss(cosine_rsm(t(Y)), cosine_rsm(t(X))).item() == pytest.approx(RSA_XY, rel=1e-6)
    assert rsa_loss(t(M_X), t(M_X)).item() == 0.0
    with pytest.raises(ValueError):
        rsa_loss(t(M_X), t(X)[:2])


def test_orth_loss_by_hand_full_product():
    assert orth_loss(t(X), t(Z_HIGH)).item() == pytest.approx(ORTH, rel=1e-6)
    # the full BxB product: an off-diagonal-only interaction still counts
    assert orth_loss(t([[1.0, 0.0], [0.0, 1.0]]), t([[0.0, 1.0], [0.0, 0.0]])).item() == pytest.approx(1 / 4)


def test_bce_by_hand():
    assert bce_loss(t(LOGITS), t(LABELS)).item() == pytest.approx(BCE, rel=1e-6)
    assert bce_loss(t(LOGITS), t(LABELS).long()).item() == pytest.approx(BCE, rel=1e-6)


def test_clip_mused_loss_total_is_eq16():
    z_low = t(X).requires_grad_()
    out = ModelOutput(z_low=z_low, z_high=t(Z_HIGH), logits=t(LOGITS))
    w = LossConfig(lambda_orth=0.5, lambda_low=0.25, lambda_high=2.0)
    loss, terms = clip_mused_loss(out, t(LABELS), t(Y, torch.float16), t(F_HIGH, torch.float16), w)
    assert set(terms) == {"loss", "bce", "orth", "rsa_low", "rsa_high"}
    expected = {"bce": BCE, "orth": ORTH, "rsa_low": RSA_XY, "rsa_high": RSA_HIGH,
                "loss": BCE + 0.5 * ORTH + 0.25 * RSA_XY + 2.0 * RSA_HIGH}
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-5), k
        assert not terms[k].requires_grad
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected["loss"], rel=1e-5)
    loss.backward()
    assert z_low.grad is not None and z_low.grad.abs().sum() > 0


def test_zero_lambda_terms_are_skipped_and_reported_as_zero():
    out = ModelOutput(z_low=t(X), z_high=t(Z_HIGH), logits=t(LOGITS))
    loss, terms = clip_mused_loss(out, t(LABELS), None, None, LossConfig(0.0, 0.0, 0.0))
    assert loss.item() == pytest.approx(BCE, rel=1e-6)
    assert terms["orth"].item() == terms["rsa_low"].item() == terms["rsa_high"].item() == 0.0
    with pytest.raises(ValueError, match="rsa_low"):
        clip_mused_loss(out, t(LABELS), None, None, LossConfig(0.0, 1.0, 0.0))


def test_mapping_loss_is_mse_and_replaces_rsa_when_chosen():
    import dataclasses

    import torch

    from foundation.core.config import LossConfig
    from foundation.objectives.losses import clip_mused_loss, mapping_loss
    from foundation.model import ModelOutput

    mapped = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    feat = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert mapping_loss(mapped, feat).item() == pytest.approx((0 + 4 + 1 + 4) / 4)
    z = torch.randn(2, 3)
    out = ModelOutput(z_low=z, z_high=z, logits=torch.zeros(2, 2), mapped_low=mapped, mapped_high=mapped * 2)
    cfg = dataclasses.replace(LossConfig(lambda_orth=0.0, lambda_low=1.0, lambda_high=0.5), guidance_loss="mapping")
    total, terms = clip_mused_loss(out, torch.zeros(2, 2), feat, feat, cfg)
    assert terms["rsa_low"].item() == pytest.approx(2.25)
    assert terms["rsa_high"].item() == pytest.approx(mapping_loss(mapped * 2, feat).item())
    assert total.item() == pytest.approx(terms["bce"].item() + 2.25 + 0.5 * terms["rsa_high"].item())
    with pytest.raises(ValueError, match="no mapping layers"):
        clip_mused_loss(ModelOutput(z_low=z, z_high=z, logits=torch.zeros(2, 2)), torch.zeros(2, 2), feat, feat, cfg)
