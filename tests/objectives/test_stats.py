"""The comparison statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from foundation.objectives.stats import compare_to_reference, holm, paired_ttest, significance_mark


def test_paired_ttest_matches_a_hand_computation():
    a, b = [0.70, 0.75, 0.72, 0.80], [0.60, 0.71, 0.70, 0.70]
    # d = [0.10, 0.04, 0.02, 0.10]; mean 0.065; sd = sqrt(sum((d - 0.065)^2) / 3) = sqrt(0.0051 / 3)
    sd = math.sqrt((0.035**2 + 0.025**2 + 0.045**2 + 0.035**2) / 3)
    t_hand = 0.065 / (sd / 2)
    t, p = paired_ttest(a, b)
    assert t == pytest.approx(t_hand, rel=1e-9)
    assert t == pytest.approx(3.1530, abs=1e-4)  # 0.065 / (0.041231 / 2)
    assert p == pytest.approx(0.0511, abs=2e-4)  # two-sided, 3 degrees of freedom (t table: t=3.182 at p=.05)
    assert all(math.isnan(x) for x in paired_ttest([1.0], [0.0]))
    assert paired_ttest([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)


def test_holm_matches_a_hand_computation():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 -> max stays 0.06), 0.04 (x1 = 0.04 -> 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, math.nan, 0.04])  # NaN is not part of the family: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_significance_marks():
    assert [significance_mark(p) for p in (0.0005, 0.005, 0.03, 0.2)] == ["***", "**", "*", "n.s."]
    assert significance_mark(math.nan) == "–"


def test_compare_to_reference_pairs_by_key_and_corrects_the_family():
    ref = {"s0/a": 0.9, "s0/b": 0.8, "s0/c": 0.85, "s1/a": 0.88}
    worse = {"s0/a": 0.5, "s0/b": 0.45, "s0/c": 0.52, "s1/a": 0.49, "s9/z": 0.1}  # s9/z has no partner
    same = {k: v + (0.01 if i % 2 else -0.01) for i, (k, v) in enumerate(ref.items())}
    rows = {r.method: r for r in compare_to_reference({"ref": ref, "worse": worse, "same": same}, "ref")}
    assert rows["worse"].n_pairs == 4
    assert rows["worse"].mean_difference == pytest.approx((0.4 + 0.35 + 0.33 + 0.39) / 4)
    _, p_worse = paired_ttest([0.9, 0.8, 0.85, 0.88], [0.5, 0.45, 0.52, 0.49])
    _, p_same = paired_ttest(list(ref.values()), list(same.values()))
    assert rows["worse"].p == pytest.approx(p_worse)
    assert rows["worse"].p_holm == pytest.approx(min(1, 2 * min(p_worse, p_same)) if p_worse < p_same
                                                 else max(min(1, 2 * p_same), p_worse))
    assert rows["worse"].mark != "n.s." and rows["same"].mark == "n.s."
    with pytest.raises(KeyError):
        compare_to_reference({"a": {}}, "ref")
