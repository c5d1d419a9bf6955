"""Statistics for method comparisons: paired t-tests with Holm–Bonferroni correction.

The paper compares CLIP-MUSED with every other method by paired t-tests; with several methods the
family-wise error rate is controlled here with Holm's step-down procedure (Holm, 1979).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Comparison", "holm", "paired_ttest", "compare_to_reference", "significance_mark"]


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test of ``a`` vs ``b`` (same length, paired by position): ``(t, p)``.

    Returns ``(nan, nan)`` for fewer than two pairs; ``(0, 1)`` when every difference is zero.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return math.nan, math.nan
    d = a - b
    if np.all(d == d[0]):
        return (0.0, 1.0) if d[0] == 0 else (math.copysign(math.inf, d[0]), 0.0)
    result = _scipy_stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaNs are left out of the family).

    With ``m`` tests sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j) * p(j))``.
    """
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def significance_mark(p_adjusted: float) -> str:
    """``***`` p < .001, ``**`` p < .01, ``*`` p < .05, ``n.s.`` otherwise (``–`` if untested)."""
    if math.isnan(p_adjusted):
        return "–"
    for level, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p_adjusted < level:
            return mark
    return "n.s."


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Reference minus ``method`` over the pairs both have."""

    method: str
    n_pairs: int
    mean_difference: float
    t: float
    p: float
    p_holm: float

    @property
    def mark(self) -> str:
        return significance_mark(self.p_holm)


def compare_to_reference(values: Mapping[str, Mapping[str, float]], reference: str) -> list[Comparison]:
    """Paired t-tests of ``reference`` against every other method, Holm-corrected as one family.

    Args:
        values: method -> {pair key (e.g. ``"seed0/synthetic/sub-01"``) -> score}.  Each test uses the
            keys the two methods share.
        reference: the method every other one is compared with.
    """
    if reference not in values:
        raise KeyError(f"reference method {reference!r} has no results")
    ref = values[reference]
    rows = []
    for method, scores in values.items():
        if method == reference:
            continue
        keys = sorted(set(ref) & set(scores))
        a, b = [ref[k] for k in keys], [scores[k] for k in keys]
        t, p = paired_ttest(a, b)
        diff = float(np.mean(np.subtract(a, b))) if keys else math.nan
        rows.append((method, len(keys), diff, t, p))
    adjusted = holm([r[4] for r in rows])
    return [Comparison(m, n, d, t, p, pa) for (m, n, d, t, p), pa in zip(rows, adjusted)]
