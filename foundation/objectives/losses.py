"""The CLIP-MUSED objective, exactly as written in the paper (Eq. 10, 11, 14, 15, 16).

    L = L_c + λ⊥·L⊥ + λ_llv·L_llv + λ_hlv·L_hlv                                  (Eq. 16)

All similarity/orthogonality terms are computed in float32 with autocast disabled, whatever the
dtype of the inputs (guidance features may be stored as float16).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from foundation.model import ModelOutput

__all__ = ["cosine_rsm", "rsa_loss", "orth_loss", "mapping_loss", "bce_loss", "clip_mused_loss", "LOSS_TERMS"]

LOSS_TERMS = ("loss", "bce", "orth", "rsa_low", "rsa_high")
NORM_EPS = 1e-8


class _Weights(Protocol):  # foundation.core.config.LossConfig satisfies this (and may set guidance_loss)
    lambda_orth: float
    lambda_low: float
    lambda_high: float


def _fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast so matmuls really run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def _check_batch(name: str, x: Tensor) -> int:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, D), got shape {tuple(x.shape)}")
    return x.shape[0]


def cosine_rsm(x: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Representational similarity matrix: ``M[i, j] = cos(x_i, x_j)``.

    Args:
        x: ``(B, D)`` features (any float dtype).
        dtype: computed in this dtype (float32 in the loss; the token-RSM figure asks float64).

    Returns:
        ``(B, B)`` in ``dtype``; rows are L2-normalised with ``eps`` so a zero row gives zeros.
    """
    _check_batch("cosine_rsm input", x)
    with _fp32(x.device):
        u = F.normalize(x.to(dtype), p=2.0, dim=1, eps=NORM_EPS)
        return u @ u.T


def rsa_loss(m_stim: Tensor, m_neural: Tensor) -> Tensor:
    """``||M_I - M_X||_F^2 / B^2`` (Eq. 10/11) between two ``(B, B)`` RSMs -> scalar float32."""
    if m_stim.shape != m_neural.shape or m_stim.dim() != 2 or m_stim.shape[0] != m_stim.shape[1]:
        raise ValueError(
            f"rsa_loss needs two (B, B) matrices, got {tuple(m_stim.shape)} and {tuple(m_neural.shape)}"
        )
    b = m_stim.shape[0]
    with _fp32(m_stim.device):
        return (m_stim.float() - m_neural.float()).pow(2).sum() / b**2


def orth_loss(z_low: Tensor, z_high: Tensor) -> Tensor:
    """``||z_low z_high^T||_F^2 / B^2`` (Eq. 15): the full ``(B, B)`` product, as written.

    Args:
        z_low, z_high: ``(B, D)`` token representations.

    Returns:
        scalar float32.
    """
    b = _check_batch("z_low", z_low)
    if z_high.shape != z_low.shape:
        raise ValueError(f"orth_loss: z_low {tuple(z_low.shape)} and z_high {tuple(z_high.shape)} differ")
    with _fp32(z_low.device):
        return (z_low.float() @ z_high.float().T).pow(2).sum() / b**2


def mapping_loss(mapped: Tensor, feat: Tensor) -> Tensor:
    """Mean squared error between mapped tokens ``(B, D_f)`` and guidance features ``(B, D_f)`` -> scalar.

    The mapping-based alternative to RSA (paper Appendix B, Table B4).
    """
    if mapped.shape != feat.shape:
        raise ValueError(f"mapping_loss: mapped {tuple(mapped.shape)} and features {tuple(feat.shape)} differ")
    with _fp32(mapped.device):
        return F.mse_loss(mapped.float(), feat.float())


def bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy with logits (Eq. 14), averaged over classes and batch.

    Args:
        logits: ``(B, C)`` pre-sigmoid scores.
        labels: ``(B, C)`` multi-hot 0/1 (any dtype).
    """
    if logits.shape != labels.shape:
        raise ValueError(f"bce_loss: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    with _fp32(logits.device):
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def clip_mused_loss(
    out: ModelOutput,
    labels: Tensor,
    feat_low: Tensor | None,
    feat_high: Tensor | None,
    cfg: _Weights,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total objective of Eq. 16 and its detached terms.

    Args:
        out: model output with ``z_low``/``z_high`` ``(B, D)`` and ``logits`` ``(B, C)``.
        labels: ``(B, C)`` multi-hot.
        feat_low, feat_high: ``(B, D_low)`` / ``(B, D_high)`` guidance features of the same
            stimuli (float16 is fine); may be ``None`` when the matching λ is 0.
        cfg: the λs (:class:`foundation.core.config.LossConfig`).

    Returns:
        ``(loss, terms)``: the scalar float32 loss to backpropagate and
        ``{"loss", "bce", "orth", "rsa_low", "rsa_high"}`` detached scalars.  A term whose λ is
        0 is not computed and reported as 0.
    """
    bce = bce_loss(out.logits, labels)
    zero = bce.new_zeros(())
    total = bce
    terms = {"bce": bce, "orth": zero, "rsa_low": zero, "rsa_high": zero}

    if cfg.lambda_orth:
        terms["orth"] = orth_loss(out.z_low, out.z_high)
        total = total + cfg.lambda_orth * terms["orth"]
    for name, lam, feat, z in (
        ("rsa_low", cfg.lambda_low, feat_low, out.z_low),
        ("rsa_high", cfg.lambda_high, feat_high, out.z_high),
    ):
        if not lam:
            continue
        if feat is None:
            raise ValueError(f"{name}: its λ is {lam} but no guidance features were given")
        if feat.shape[0] != z.shape[0]:
            raise ValueError(f"{name}: {feat.shape[0]} guidance rows for a batch of {z.shape[0]}")
        if getattr(cfg, "guidance_loss", "rsa") == "mapping":
            mapped = out.mapped_low if name == "rsa_low" else out.mapped_high
            if mapped is None:
                raise ValueError(f"{name}: loss.guidance_loss is 'mapping' but the model has no mapping layers")
            terms[name] = mapping_loss(mapped, feat)
        else:
            with torch.no_grad():
                m_stim = cosine_rsm(feat)
            terms[name] = rsa_loss(m_stim, cosine_rsm(z))
        total = total + lam * terms[name]

    terms["loss"] = total
    return total, {k: terms[k].detach() for k in LOSS_TERMS}
