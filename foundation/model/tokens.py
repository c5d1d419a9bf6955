"""Subject vocabulary and the per-subject token table.

Subjects are addressed by *global* ids ``"dataset/subject"``.  The vocabulary is explicit and
ordered: row ``i`` of the token table belongs to ``vocab[i]`` forever, so growing the vocabulary
(a new subject or a new dataset) appends rows and never moves existing ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from foundation.core.errors import CheckpointError, UnknownSubjectError

__all__ = ["SubjectVocab", "SubjectTokens"]

TOKEN_INIT_STD = 0.02


def _duplicates(keys: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dupes: set[str] = set()
    for k in keys:
        (dupes if k in seen else seen).add(k)
    return sorted(dupes)


def _preview(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


class SubjectVocab:
    """An ordered, append-only list of unique global subject ids with O(1) lookup."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._keys: list[str] = []
        self._lookup: dict[str, int] = {}
        self.extend(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._lookup

    def __iter__(self):
        return iter(self._keys)

    @property
    def keys(self) -> list[str]:
        """The ids in row order (a copy)."""
        return list(self._keys)

    def extend(self, keys: Sequence[str]) -> None:
        """Append new ids; raises ``ValueError`` naming any id that is repeated or already known."""
        keys = list(keys)
        bad = [k for k in keys if not isinstance(k, str) or not k]
        if bad:
            raise ValueError(f"subject ids must be non-empty strings, got {bad!r}")
        dupes = _duplicates(keys)
        known = sorted({k for k in keys if k in self._lookup})
        if dupes or known:
            parts = []
            if dupes:
                parts.append(f"repeated in the request: {dupes}")
            if known:
                parts.append(f"already in the vocabulary: {known}")
            raise ValueError("duplicate subject ids (" + "; ".join(parts) + ")")
        for k in keys:
            self._lookup[k] = len(self._keys)
            self._keys.append(k)

    def index(self, keys: Sequence[str]) -> Tensor:
        """Map ids to rows.

        Args:
            keys: ``B`` global subject ids.

        Returns:
            ``(B,)`` int64 CPU tensor of row indices.

        Raises:
            UnknownSubjectError: naming every unknown id and the vocabulary size.
        """
        if isinstance(keys, str):
            keys = [keys]
        try:
            rows = [self._lookup[k] for k in keys]
        except KeyError:
            unknown = sorted({str(k) for k in keys if k not in self._lookup})
            raise UnknownSubjectError(
                f"unknown subject id(s) {_preview(unknown)}: not among the {len(self)} known "
                f"subject ids ({_preview(self._keys, 3)}). Ids are 'dataset/subject'; a new "
                "subject needs add_subjects() (and training) before use."
            ) from None
        return torch.tensor(rows, dtype=torch.long)


class SubjectTokens(nn.Module):
    """Learnable tokens per subject: ``weight`` ``(S, tokens_per_subject, dim)``.

    Adding a subject adds exactly ``tokens_per_subject * dim`` parameters and touches no other
    weight.  Note that :meth:`add_subjects` replaces the ``weight`` Parameter object, so an
    optimizer built before the call must be rebuilt (or have its param group updated).
    """

    def __init__(self, vocab: Sequence[str], *, dim: int, tokens_per_subject: int) -> None:
        super().__init__()
        if dim <= 0 or tokens_per_subject <= 0:
            raise ValueError(f"dim and tokens_per_subject must be positive, got {dim}, {tokens_per_subject}")
        self.dim = dim
        self.tokens_per_subject = tokens_per_subject
        self._vocab = SubjectVocab(vocab)
        self.weight = nn.Parameter(self._new_rows(len(self._vocab)))

    def _new_rows(self, n: int, *, like: Tensor | None = None) -> Tensor:
        kw: dict[str, Any] = {} if like is None else {"device": like.device, "dtype": like.dtype}
        rows = torch.empty(n, self.tokens_per_subject, self.dim, **kw)
        nn.init.trunc_normal_(rows, std=TOKEN_INIT_STD, a=-2 * TOKEN_INIT_STD, b=2 * TOKEN_INIT_STD)
        return rows

    @property
    def vocab(self) -> list[str]:
        """Global subject ids in row order."""
        return self._vocab.keys

    def __len__(self) -> int:
        return len(self._vocab)

    def index(self, keys: Sequence[str]) -> Tensor:
        """``B`` ids -> ``(B,)`` int64 row indices; raises :class:`UnknownSubjectError`."""
        return self._vocab.index(keys)

    @torch.no_grad()
    def add_subjects(self, keys: Sequence[str]) -> None:
        """Append one freshly initialised row per new id; existing rows are kept bit for bit."""
        keys = list(keys)
        self._vocab.extend(keys)  # validates first: nothing changes on error
        if not keys:
            return
        old = self.weight
        grown = torch.cat([old.detach(), self._new_rows(len(keys), like=old)], dim=0)
        self.weight = nn.Parameter(grown, requires_grad=old.requires_grad)

    def forward(self, idx: Tensor) -> Tensor:
        """``idx`` ``(B,)`` int64 -> tokens ``(B, tokens_per_subject, dim)``."""
        return self.weight[idx.to(self.weight.device)]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        key = prefix + "weight"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.weight.shape):
            got = tuple(state_dict[key].shape)
            raise CheckpointError(
                f"{key}: checkpoint token table has shape {got} ({got[0]} subjects), this model has "
                f"{tuple(self.weight.shape)} ({len(self)} subjects). Rebuild the model from the "
                "checkpoint's config_dict() (its vocab), then add_subjects() for new ones."
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"subjects={len(self)}, tokens_per_subject={self.tokens_per_subject}, dim={self.dim}"
