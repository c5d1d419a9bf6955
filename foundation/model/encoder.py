"""Pre-LN Transformer encoder (Eq. 2-3 / 6-7 of the paper), timm-style.

Two CPU-only fast paths, both measured by ``benchmarks/bench_step.py`` (see ``docs/PERFORMANCE.md``)
and both equal to the plain PyTorch formulation (``tests/model/test_encoder_fast_paths.py``):

* short sequences (``T <= CPU_MATH_ATTENTION_MAX_TOKENS``, e.g. NSD's 12 tokens) take the explicit
  ``softmax(q k^T / sqrt(d)) v`` path: there the fused CPU flash-attention kernel costs ~1.4x the two
  small batched matmuls (it zero-fills and tiles gradient buffers meant for long sequences); longer
  sequences (HCP's 578 tokens) and every GPU keep :func:`~torch.nn.functional.scaled_dot_product_attention`;
* :class:`Dropout` draws its keep-mask as ``U[0, 1) >= p`` instead of ``bernoulli_(1 - p)``: the same
  Bernoulli(1 - p) mask and the same ``x * mask / (1 - p)`` at about half the cost: on the AMD EPYC
  measured, ``bernoulli_`` takes ~19 ms for 1.6 M floats on one thread or two (a serial kernel), and
  ``rand_like`` ~9 ms.  Only the random stream differs, so a seeded CPU run draws other masks than
  before this change (same distribution); GPUs keep ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CPU_FAST_PATHS", "CPU_MATH_ATTENTION_MAX_TOKENS", "Attention", "Block", "Dropout", "Encoder", "Mlp"]

#: On CPU, sequences of at most this many tokens use the explicit attention path (see the module doc;
#: the crossover measured on 2 AMD EPYC cores is between 64 and 128 tokens).
CPU_MATH_ATTENTION_MAX_TOKENS = 32

#: ``False`` turns the CPU fast paths off (the plain PyTorch formulation they replace): for the
#: benchmarks' A/B comparisons (``benchmarks/bench_step_ab.py fast=off``) and the tests
CPU_FAST_PATHS = True


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose CPU training path draws the mask from ``torch.rand_like``.

    ``keep = U[0, 1) >= p`` is a Bernoulli(1 - p) draw (to 2^-24), and the output is
    ``x * keep / (1 - p)`` exactly as :func:`torch.nn.functional.dropout` computes it; only the random
    stream differs.  Other devices, dtypes below float32 and ``inplace=True`` use ``F.dropout``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (not self.training or self.p == 0.0 or self.p == 1.0 or self.inplace or x.device.type != "cpu"
                or x.dtype not in (torch.float32, torch.float64) or not CPU_FAST_PATHS):
            return super().forward(x)
        noise = torch.rand_like(x, memory_format=torch.preserve_format).ge_(self.p).div_(1.0 - self.p)
        return x * noise


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; ``(B, T, D) -> (B, T, D)``.

    The default path is :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels);
    on CPU, sequences of at most :data:`CPU_MATH_ATTENTION_MAX_TOKENS` tokens take the explicit
    softmax path, which is faster there.  :meth:`forward` with ``return_attention=True`` always takes
    the explicit path and also returns the attention weights ``(B, heads, T, T)`` (before attention
    dropout), for plots.
    """

    def __init__(self, dim: int, heads: int, *, attn_dropout: float = 0.0, proj_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_dropout)

    def forward(self, x: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, D)`` -> ``(out (B, T, D), weights (B, heads, T, T) or None)``."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, hd)
        p = self.attn_dropout if self.training else 0.0
        weights: Tensor | None = None
        if return_attention or (x.device.type == "cpu" and t <= CPU_MATH_ATTENTION_MAX_TOKENS and CPU_FAST_PATHS):
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, T, T)
            probs = logits.float().softmax(dim=-1).to(q.dtype)
            if return_attention:
                weights = probs
            out = F.dropout(probs, p=p, training=self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.proj_drop(self.proj(out)), weights


class Mlp(nn.Module):
    """``Linear(D, hidden) -> GELU -> Dropout -> Linear(hidden, D) -> Dropout``; ``(B, T, D) -> (B, T, D)``."""

    def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN Transformer layer; ``(B, T, D) -> (B, T, D)``.

    ``z'_l = MHSA(LN(z_{l-1})) + z_{l-1}`` (Eq. 6) and ``z_l = MLP(LN(z'_l)) + z'_l``.  The paper's
    Eq. 7 writes the second residual as ``+ z_{l-1}``; that is a typo relative to its own Eq. 3
    (and to every pre-LN Transformer), so the standard ``+ z'_l`` is implemented.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_dropout=attn_dropout, proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, D)`` -> ``(x (B, T, D), weights (B, heads, T, T) or None)``."""
        a, weights = self.attn(self.norm1(x), return_attention=return_attention)
        x = x + a  # Eq. 6
        x = x + self.mlp(self.norm2(x))  # Eq. 3 (Eq. 7's "+ z_{l-1}" is a typo)
        return x, weights


class Encoder(nn.Module):
    """A stack of ``depth`` :class:`Block` s; returns the final hidden states (no final LN).

    Args:
        depth: number of layers ``L``.
        dim, heads, mlp_ratio, dropout, attn_dropout: see :class:`Block`.
    """

    def __init__(
        self,
        depth: int,
        *,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [Block(dim, heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth)]
        )

    def forward(self, x: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, D)`` -> ``(h (B, T, D), last-layer weights (B, heads, T, T) or None)``.

        Only the last layer computes explicit weights, and only when ``return_attention``.
        """
        weights: Tensor | None = None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x, weights = blk(x, return_attention=return_attention and i == last)
        return x, weights
