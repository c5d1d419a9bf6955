"""Pre-LN Transformer encoder (Eq. 2-3 / 6-7 of the paper), timm-style."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "Mlp", "Block", "Encoder"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; ``(B, T, D) -> (B, T, D)``.

    The default path is :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels).
    :meth:`forward` with ``return_attention=True`` takes an explicit softmax path instead and also
    returns the attention weights ``(B, heads, T, T)`` (before attention dropout), for plots.
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
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: Tensor, *, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, D)`` -> ``(out (B, T, D), weights (B, heads, T, T) or None)``."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, hd)
        p = self.attn_dropout if self.training else 0.0
        weights: Tensor | None = None
        if return_attention:
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, T, T)
            weights = logits.float().softmax(dim=-1).to(q.dtype)
            out = F.dropout(weights, p=p, training=self.training) @ v
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
        self.drop = nn.Dropout(dropout)

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
